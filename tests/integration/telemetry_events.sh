#!/usr/bin/env bash
# Events and error figures reach the controller store (docs/telemetry.md
# "Agent"), with a real broker (TLS + ACL), a real controller and a real agent:
# * disk_low: telemetry.disk_low above the free disk gives one event with
#   free/total/threshold bytes and the path;
# * clock_jump: the test-only failpoint tele.report.clock_jump reads the wall
#   clock an hour ahead for one tick: a forward and a backward event;
# * errors by kind: a runner stopped with SIGSTOP and a manifest
#   runtime.limits.max_queue of 2: requests beyond the queue get 503, and the
#   model record's errors.overload equals the number of 503s; queue_depth_max
#   is the queue limit;
# * a trial failed on latency (max_p95_latency_ms 1): event:trial_failed with
#   reason latency and the p95 figures, and event:rolled_back.
#
# usage: telemetry_events.sh FLOTILLA FLOTILLA-CONTROLLER FLOTILLA-AGENT MKMODEL
set -u
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
. "$here/telemetry_lib.sh" "$1" "$2" "$3"
FLOTILLA=$1 MKMODEL=$4
command -v jq >/dev/null || { echo "FAIL: jq is not installed"; exit 1; }
jqe() { jq -e "$@" >/dev/null; } # a check on JSON (its output hidden, not the check's)
tele_setup tele-events dev1

mk_model "$FLEET_DIR/m/model.gguf" 1
created=$(date -u +%Y-%m-%dT%H:%M:%SZ); expires=$(date -u -d '+30 days' +%Y-%m-%dT%H:%M:%SZ)
bundle() { # VERSION SEQ TRIAL(json or null)
  jq -n --arg c "$created" --arg e "$expires" --arg v "$1" --argjson s "$2" --argjson t "$3" '{name: "m",
    version: $v, sequence: $s, created: $c, expires: $e, compatibility: {backend: "gguf"},
    runtime: {limits: {max_queue: 2}}} + (if $t == null then {} else {trial: $t} end)' >"$FLEET_DIR/t$2.json"
  "$FLOTILLA" bundle create --template "$FLEET_DIR/t$2.json" --key "$FLEET_DIR/keys/release.pem" \
    -o "$FLEET_DIR/v$2.tar" "$FLEET_DIR/m/model.gguf" >/dev/null
}
bundle 1.0 1 null
bundle 2.0 2 '{"window_s": 600, "min_requests": 5, "max_p95_latency_ms": 1}'
check "bundles made" test -s "$FLEET_DIR/v1.tar" -a -s "$FLEET_DIR/v2.tar"

api_up() { curl -s -m 2 -o /dev/null "http://127.0.0.1:$port/healthz"; }
for try in 1 2 3 4 5; do # a random port may be taken: the agent exits, try another
  port=$(( 20000 + (RANDOM * 32768 + RANDOM) % 40000 ))
  # 1 PiB: more than any test machine has free
  FLOTILLA_FAILPOINTS="tele.report.clock_jump=5*fail" tele_agent_start dev1 \
    "disk_low = 1125899906842624" "listen = 127.0.0.1:$port
socket = off"
  fleet_wait 10 api_up && break
  kill -0 "${FLEET_AGENT_PID[dev1]}" 2>/dev/null && break
  wait "${FLEET_AGENT_PID[dev1]}" 2>/dev/null
done
check "agent dev1 online" fleet_wait_online 30 dev1

# --- disk_low and clock_jump (device-wide: no model/version)
evb() { q "SELECT body FROM telemetry WHERE device='dev1' AND kind='event:$1' ${2:-} ORDER BY seq"; }
has() { [ -n "$(evb "$@")" ]; }
check "event:disk_low reaches the controller" fleet_wait 30 has disk_low
d=$(evb disk_low | head -1)
echo "$d"
check "disk_low: one event (hysteresis)" test "$(evb disk_low | wc -l)" = 1
check "disk_low: reason and threshold" \
  jqe '.reason == "below_threshold" and .details.threshold_bytes == 1125899906842624' <<<"$d"
check "disk_low: free below threshold, total above free" \
  jqe '.details.free_bytes < .details.threshold_bytes and .details.total_bytes >= .details.free_bytes' <<<"$d"
free_df=$(( $(stat -f -c '%a*%S' "$FLEET_DIR/dev1/state") ))
check "disk_low: free figure is the file system's (within 1 GiB)" \
  jqe --argjson f "$free_df" '(.details.free_bytes - $f) | fabs < 1073741824' <<<"$d"
check "disk_low: the state directory" jqe --arg p "$FLEET_DIR/dev1/state" '.details.path == $p' <<<"$d"
check "disk_low: device-wide (no model)" jqe 'has("model") | not' <<<"$d"

fwd="AND json_extract(body,'\$.reason')='forward'" back="AND json_extract(body,'\$.reason')='backward'"
check "event:clock_jump forward reaches the controller" fleet_wait 30 has clock_jump "$fwd"
check "event:clock_jump backward (the hour taken back)" fleet_wait 10 has clock_jump "$back"
f=$(evb clock_jump "$fwd"); echo "$f"
check "clock_jump forward: about +3600 s, before/after figures" \
  jqe '.details.jump_s >= 3590 and .details.jump_s <= 3610 and (.details.after - .details.before) == .details.jump_s' <<<"$f"
check "clock_jump backward: about -3600 s" \
  jqe '.details.jump_s <= -3590 and .details.jump_s >= -3610' <<<"$(evb clock_jump "$back")"
check "clock_jump: exactly one of each (one armed hit)" test "$(evb clock_jump | wc -l)" = 2

# --- errors by kind and queue depth
D=$FLEET_DIR/dev1
spool() { cp "$1" "$D/state/spool/.$2.part" && mv "$D/state/spool/.$2.part" "$D/state/spool/$2"; }
api() { curl -s -m 30 "$@"; }
st() { api "http://127.0.0.1:$port/v1/status" | jq -r ".models.m.$1 // empty"; }
served() { [ "$(st version)" = "$1" ]; }
spool "$FLEET_DIR/v1.tar" v1.tar
check "v1 is served" fleet_wait 60 served 1.0
pid=$(st pid)
check "runner pid known" test "${pid:-0}" -gt 1
kill -STOP "$pid"
body='{"model":"m","prompt":"Hello","max_tokens":4,"temperature":0}'
pids=()
for i in 1 2 3 4 5 6; do
  api -o /dev/null -w '%{http_code}\n' -d "$body" "http://127.0.0.1:$port/v1/completions" >"$FLEET_DIR/code$i" &
  pids+=($!); FLEET_EXTRA_PIDS+=($!)
  sleep 0.2
done
sleep 1.5 # an agent tick sees the queue
kill -CONT "$pid"
wait "${pids[@]}" 2>/dev/null
n503=$(cat "$FLEET_DIR"/code* | grep -c '^503$')
n200=$(cat "$FLEET_DIR"/code* | grep -c '^200$')
echo "answers: $n200 x 200, $n503 x 503"
check "some requests overflowed the queue of 2 (503)" test "$n503" -ge 1
check "the others were answered" test $((n200 + n503)) = 6
msum() { q "SELECT COALESCE($1(json_extract(body,'\$.$2')),0) FROM telemetry WHERE device='dev1'
            AND kind='model' AND json_extract(body,'\$.model')='m' AND json_extract(body,'\$.version')='1.0'"; }
reqs6() { [ "$(msum SUM requests)" -ge 6 ]; }
check "model records count the 6 requests" fleet_wait 20 reqs6
sleep 2 # one more period: nothing late
check "errors.overload equals the 503s ($n503)" test "$(msum SUM errors.overload)" = "$n503"
check "no other error kinds" test "$(msum SUM errors.timeout)$(msum SUM errors.internal)$(msum SUM errors.crash)" = 000
check "requests = 200s + 503s" test "$(msum SUM requests)" = 6
check "queue_depth_max is the queue limit (2)" test "$(msum MAX queue_depth_max)" = 2
check "queue_depth (end of period) back to 0" test "$(q "SELECT json_extract(body,'\$.queue_depth') FROM telemetry
  WHERE device='dev1' AND kind='model' AND json_extract(body,'\$.version')='1.0' ORDER BY seq DESC LIMIT 1")" = 0

# --- a trial that fails on latency
spool "$FLEET_DIR/v2.tar" v2.tar
check "v2 served, in TRIAL" fleet_wait 60 bash -c "[ \"\$(curl -s -m 5 http://127.0.0.1:$port/v1/status | jq -r '.models.m.version + \" \" + .models.m.state')\" = '2.0 TRIAL' ]"
for i in 1 2 3 4 5 6; do
  api -o /dev/null -d '{"model":"m","prompt":"Hello","max_tokens":64,"temperature":0}' "http://127.0.0.1:$port/v1/completions"
done
check "p95 over 1 ms rolled v2 back to v1" fleet_wait 20 served 1.0
v2ev() { q "SELECT body FROM telemetry WHERE device='dev1' AND kind='event:$1'
            AND json_extract(body,'\$.model')='m' AND json_extract(body,'\$.version')='2.0'"; }
tf() { [ -n "$(v2ev trial_failed)" ]; }
rb() { [ -n "$(v2ev rolled_back)" ]; }
check "event:trial_failed of 2.0 reaches the controller" fleet_wait 20 tf
t=$(v2ev trial_failed); echo "$t"
check "trial_failed: reason latency" jqe '.reason == "latency"' <<<"$t"
check "trial_failed: p95 figure over its limit, request count" \
  jqe '.details.p95_ms > 1 and .details.p95_limit_ms == 1 and .details.latency_requests >= 5' <<<"$t"
check "trial_failed: the judge's counters too" \
  jqe '.details.requests >= 5 and .details.failed == 0 and .details.crashes == 0' <<<"$t"
check "trial_failed: text with the figures" jqe '.text | test("^latency p95 [0-9.]+ ms over [0-9]+ requests, limit 1 ms$")' <<<"$t"
check "event:rolled_back of 2.0 reaches the controller" fleet_wait 20 rb
check "rolled_back: reason latency" jqe '.reason == "latency"' <<<"$(v2ev rolled_back)"

finish
