#!/usr/bin/env bash
# Broker restart and controller kill -9 in the middle of a rollout to real
# agents (issue 11, docs/scale.md "Chaos"). transport_restart.sh covers both
# for one agent and a direct deploy (mid-transfer), rollout_fleet.sh a
# controller SIGTERM mid-rollout; this is the rest: a staged rollout to three
# real `flotilla-agent run` processes (local API on, 1 MiB of data per
# bundle fetched at 128 KiB/s, so each interruption lands mid-transfer):
#
# 1. rollout of 1.0 (waves 34 %, 100 %): once an agent is fetching, the
#    controller is killed with SIGKILL and started again 2 s later on the
#    same data directory; then, once the second wave fetches, again.
# 2. rollout of 1.1: once an agent is fetching, the broker is stopped for
#    5 s and started again (same port, persistent sessions); once the second
#    wave fetches, the broker goes down and the controller is killed -9
#    while it is down, and both come back.
# Each rollout completes with 0 failed; each agent commits each version
# exactly once (its committed events in the controller's store); every
# agent's own status runs 1.1, its local API answers a completion, telemetry
# arrived exactly once (seq 1..last in the store), `flotilla-agent check`
# after a clean stop finds 0 problems.
#
#   chaos_restart.sh FLOTILLA CONTROLLER AGENT MKMODEL
set -uo pipefail
if [ $# -ne 4 ]; then
  echo "usage: chaos_restart.sh FLOTILLA CONTROLLER AGENT MKMODEL" >&2
  exit 2
fi
FLOTILLA=$1 MKMODEL=$4
export FLEET_FLOTILLA=$1 FLEET_CONTROLLER_BIN=$2 FLEET_AGENT_BIN=$3
here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../.." && pwd)
. "$here/lib.sh"
. "$src/packaging/demo/fleet-lib.sh"
. "$here/sim_lib.sh"
. "$here/chaos_lib.sh"
command -v sqlite3 >/dev/null || { echo "FAIL: sqlite3 not installed"; exit 1; }
t0=$SECONDS
IDS=(cr1 cr2 cr3)
DB=

chaos_init chaos_restart
fleet_pki "${IDS[@]}"
fleet_broker_start
fleet_trust tiny
fleet_controller_start
DB=$FLEET_DIR/controller-data/controller.db
for id in "${IDS[@]}"; do chaos_agent_start "$id" "" 127.0.0.1 "bandwidth = 131072"; done
check "three agents online" fleet_wait_online 60 "${IDS[@]}"

models_ok() { local id; for id in "${IDS[@]}"; do [ "$(fleet_agent_version "$id" tiny)" = "$1" ] || return 1; done; }
any_fetching() { local id; for id in "$@"; do chaos_fetching "$id" && return 0; done; return 1; }
controller_kill9() {
  kill -KILL "$FLEET_CTL_PID" 2>/dev/null
  wait "$FLEET_CTL_PID" 2>/dev/null
  FLEET_CTL_PID=
}
broker_stop() { "$FLEET_BROKER_PKG/stop-broker.sh" "$FLEET_DIR/pki" >/dev/null 2>&1; FLEET_BROKER_UP=; }
broker_start() {
  FL_BROKER_WAIT_S=10 "$FLEET_BROKER_PKG/start-broker.sh" "$FLEET_DIR/pki" "$FLEET_MQTT_PORT" \
    >"$FLEET_DIR/broker-restart.out" 2>&1 && FLEET_BROKER_UP=1
}
# Wave 2 is fetching: the agents of wave 1 (the rollout's first wave size)
# run VERSION and another agent is FETCHING. Prints that agent.
wave2_fetching() { # ROLLOUT VERSION
  local n1 on=0 id f=
  n1=$(rollout_field "$1" '.counts.waves[0].devices')
  for id in "${IDS[@]}"; do
    if [ "$(fleet_agent_version "$id" tiny)" = "$2" ]; then on=$((on + 1))
    elif chaos_fetching "$id"; then f=$id; fi
  done
  [ -n "$f" ] && [ "$on" -ge "${n1:-99}" ] && echo "wave 1 ($on agents) done, wave 2: $f fetching"
}
committed() { # ID VERSION: committed events for it in the store
  sqlite3 -cmd '.timeout 5000' "$DB" "SELECT COUNT(*) FROM telemetry WHERE device='$1'
    AND kind='event:committed' AND json_extract(body,'\$.version')='$2'" 2>/dev/null
}
body='{"model":"tiny","version":"%s","waves":[34,100],"soak_s":3,"max_concurrent":10,"max_failure_rate":0.5,"min_sample":3}'

# ---------------------------------------------------------------- 1
echo "--- 1: controller kill -9 mid-rollout (twice)"
chaos_bundle 1.0 1 1024 || fleet_die "bundle 1.0"
r1=$(fleet_rollout_create "$(printf "$body" 1.0)")
check "rollout of 1.0 created ($r1)" [ -n "$r1" ]
check "1: an agent of wave 1 is fetching" chaos_wait 60 any_fetching "${IDS[@]}"
controller_kill9
echo "controller killed at $((SECONDS - t0)) s"
sleep 2
FLEET_CTL_PORT=0 fleet_controller_start
check "1: the controller is back" fleet_mqtt_connected
check "1: after the kill wave 1 completes and wave 2 fetches" chaos_wait 120 wave2_fetching "$r1" 1.0
controller_kill9
sleep 2
FLEET_CTL_PORT=0 fleet_controller_start
check "1: the controller is back again" fleet_mqtt_connected
check "1: the rollout completes (<= 120 s)" chaos_wait 120 rollout_done "$r1"
echo "rollout 1.0: $(fleet_rollout_state "$r1") $(rollout_field "$r1" '.counts | tojson') at $((SECONDS - t0)) s"
check "1: ... completed, none failed" \
  bash -c "[ '$(fleet_rollout_state "$r1")' = completed ] && [ '$(rollout_field "$r1" .counts.failed)' = 0 ]"
check "1: every agent's own status runs 1.0" chaos_wait 30 models_ok 1.0

# ---------------------------------------------------------------- 2
echo "--- 2: broker restart mid-rollout, then broker down + controller kill -9"
chaos_bundle 1.1 2 1024 || fleet_die "bundle 1.1"
r2=$(fleet_rollout_create "$(printf "$body" 1.1)")
check "rollout of 1.1 created ($r2)" [ -n "$r2" ]
check "2: an agent of wave 1 is fetching" chaos_wait 60 any_fetching "${IDS[@]}"
broker_stop
echo "broker stopped at $((SECONDS - t0)) s"
sleep 5
check "2: the broker starts again on its port" broker_start
check "2: after the broker restart wave 1 completes and wave 2 fetches" chaos_wait 120 wave2_fetching "$r2" 1.1
broker_stop
controller_kill9
sleep 3
check "2: the broker starts again" broker_start
FLEET_CTL_PORT=0 fleet_controller_start
check "2: the controller is back" fleet_mqtt_connected
check "2: the rollout completes (<= 120 s)" chaos_wait 120 rollout_done "$r2"
echo "rollout 1.1: $(fleet_rollout_state "$r2") $(rollout_field "$r2" '.counts | tojson') at $((SECONDS - t0)) s"
check "2: ... completed, none failed" \
  bash -c "[ '$(fleet_rollout_state "$r2")' = completed ] && [ '$(rollout_field "$r2" .counts.failed)' = 0 ]"
check "2: every agent's own status runs 1.1" chaos_wait 30 models_ok 1.1

# ---------------------------------------------------------------- end state
echo "--- end state"
check "every agent's local API answers a completion" chaos_wait 30 chaos_generate_all "${IDS[@]}"
for id in "${IDS[@]}"; do
  echo "$id: events $(chaos_events "$id")"
  check "$id: telemetry reached the controller exactly once" chaos_tele_once "$id"
  check "$id: committed 1.0 once and 1.1 once ($(committed "$id" 1.0), $(committed "$id" 1.1))" \
    [ "$(committed "$id" 1.0)/$(committed "$id" 1.1)" = 1/1 ]
done
for r in "$r1" "$r2"; do
  n=$(sqlite3 -readonly "$DB" "SELECT COUNT(*) FROM audit WHERE action='rollout.deploy' AND reason LIKE 'rollout $r: %'")
  check "rollout $r: one deploy per device in the audit log ($n for ${#IDS[@]})" [ "$n" = ${#IDS[@]} ]
done
for id in "${IDS[@]}"; do
  check "$id: after a clean stop, flotilla-agent check finds 0 problems" chaos_agent_check "$id"
done
if [ "$fails" != 0 ]; then
  FLEET_FAILED=1
  echo "--- controller log (tail)"; tail -n 15 "$FLEET_DIR/controller.log"
  for id in "${IDS[@]}"; do echo "--- $id log (tail)"; tail -n 8 "$FLEET_DIR/$id/agent.log"; done
fi
echo "total $((SECONDS - t0)) s"
finish
