#!/usr/bin/env bash
# What a served model reports (docs/telemetry.md "Agent"): an install from
# the spool gives install_started/staged, switched and committed events with
# the version; requests to the local API give per-version "model" records
# (requests, latency histogram, tokens, output-length quality signals); a
# runner killed with -9 gives a runner_crashed event with the signal, the
# runner's last log lines and the failing request's size and parameters but
# not its content, and the restart is counted.
#
# usage: telemetry_serving.sh FLOTILLA FLOTILLA-CONTROLLER FLOTILLA-AGENT MKMODEL
set -u
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
. "$here/telemetry_lib.sh" "$1" "$2" "$3"
FLOTILLA=$1 MKMODEL=$4
tele_setup tele-serve dev1

mk_model "$FLEET_DIR/v1/model.gguf" 1
mk_bundle "$FLEET_DIR/v1.tar" "$FLEET_DIR/keys" m 1.0 1 "$FLEET_DIR/v1/model.gguf"
api_up() { curl -s -m 2 -o /dev/null "http://127.0.0.1:$port/healthz"; }
for try in 1 2 3 4 5; do # a random port may be taken: the agent exits, try another
  port=$(( 20000 + (RANDOM * 32768 + RANDOM) % 40000 ))
  tele_agent_start dev1 "" "listen = 127.0.0.1:$port
socket = off"
  fleet_wait 10 api_up && break
  kill -0 "${FLEET_AGENT_PID[dev1]}" 2>/dev/null && break
  wait "${FLEET_AGENT_PID[dev1]}" 2>/dev/null
done
check "agent dev1 online" fleet_wait_online 30 dev1
D=$FLEET_DIR/dev1
cp "$FLEET_DIR/v1.tar" "$D/state/spool/.v1.part" && mv "$D/state/spool/.v1.part" "$D/state/spool/v1.tar"
api() { curl -s -m 30 "$@"; }
served() { [ "$(api "http://127.0.0.1:$port/v1/status" | jq -r '.models.m.version // empty')" = 1.0 ]; }
check "v1 is served" fleet_wait 60 served

ev() { q "SELECT COUNT(*) FROM telemetry WHERE device='dev1' AND kind='event:$1'
          AND json_extract(body,'\$.model')='m' AND json_extract(body,'\$.version')='1.0'"; }
has_events() {
  for k in install_started install_staged switched committed; do
    [ "$(ev $k)" -ge 1 ] || return 1
  done
}
check "install events with model and version" fleet_wait 15 has_events

body='{"model":"m","prompt":"Hello","max_tokens":8,"temperature":0}'
for i in 1 2 3 4 5; do api -d "$body" "http://127.0.0.1:$port/v1/completions" >/dev/null; done
sum() { q "SELECT COALESCE(SUM(json_extract(body,'\$.$1')),0) FROM telemetry WHERE device='dev1'
           AND kind='model' AND json_extract(body,'\$.model')='m'
           AND json_extract(body,'\$.version')='1.0'"; }
five() { [ "$(sum requests)" -ge 5 ]; }
check "model records count the 5 requests" fleet_wait 15 five
check "latency histogram holds them" test "$(sum latency_us.n)" -ge 5
check "tokens counted" test "$(sum tokens_out)" -ge 5
check "quality: output lengths observed" test "$(sum quality.outputs)" -ge 5

# Kill the runner with -9 (its pid from the local API's status).
pid=$(api "http://127.0.0.1:$port/v1/status" | jq -r '.models.m.pid')
check "runner pid known" test "${pid:-0}" -gt 1
# Stopped, it takes a request that never finishes; then it dies with it.
kill -STOP "$pid"
api -d '{"model":"m","prompt":"do not send this text","max_tokens":7,"temperature":0.5}' \
  "http://127.0.0.1:$port/v1/completions" >/dev/null &
FLEET_EXTRA_PIDS+=($!)
sleep 1
kill -KILL "$pid"
crash() { q "SELECT body FROM telemetry WHERE device='dev1' AND kind='event:runner_crashed' LIMIT 1"; }
crashed() { [ -n "$(crash)" ]; }
check "runner_crashed event" fleet_wait 20 crashed
c=$(crash)
echo "$c" | head -c 600; echo
check "crash event names the signal" test "$(jq -r '.details.signal' <<<"$c")" = 9
check "crash event: model and version" test "$(jq -r '.model + " " + .version' <<<"$c")" = "m 1.0"
check "crash event carries the runner's log lines (an array)" jq -e '.details.log_tail | type == "array"' <<<"$c" >/dev/null
check "crash event: the failing request's size and parameters" \
  jq -e '.details.request.bytes > 20 and .details.request.params.max_tokens == 7' <<<"$c" >/dev/null
check "crash event never carries request content" bash -c "! grep -q 'do not send' <<<'$c'"
restarts() { [ "$(sum runner_restarts)" -ge 1 ]; }
check "runner restart counted in the model record" fleet_wait 15 restarts

finish
