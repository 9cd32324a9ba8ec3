#!/usr/bin/env bash
# Chaos: part of the fleet is cut off during a rollout wave. Two flotilla-sim
# processes: group A (SIM_N_A devices, default 80) talks to mosquitto
# directly, group B (SIM_N_B, default 20) through faultproxy. Right after the
# rollout starts, the proxy cuts B off (every connection reset, new ones
# refused: what an iptables REJECT rule does), then heals after 20 s.
#
#   chaos_sim_partition.sh FLOTILLA CONTROLLER AGENT MKMODEL SIM FAULTPROXY
#
# Checks: B goes offline at the controller (last will); while B is away the
# rollout waits (running, its wave not done, no failure counted, the gate
# does not trip, devices beyond the wave untouched); B comes back, gets the
# deploy the broker kept in its session (clean start off, expiry 1 day), and
# the rollout completes; every device of both groups ends on the new
# version, none without a working model.
set -uo pipefail
if [ $# -ne 6 ]; then
  echo "usage: chaos_sim_partition.sh FLOTILLA CONTROLLER AGENT MKMODEL SIM FAULTPROXY" >&2
  exit 2
fi
FLOTILLA=$1 MKMODEL=$4 SIM=$5 PROXY=$6
export FLEET_FLOTILLA=$1 FLEET_CONTROLLER_BIN=$2 FLEET_AGENT_BIN=$3
here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../.." && pwd)
. "$here/lib.sh"
. "$src/packaging/demo/fleet-lib.sh"
. "$here/sim_lib.sh"
NA=${SIM_N_A:-80} NB=${SIM_N_B:-20}
N=$((NA + NB))

fleet_init chaos_partition
( sleep "${FL_TEST_WATCHDOG_S:-280}"; echo "FAIL: watchdog"; kill -TERM $$ ) >/dev/null 2>&1 &
FLEET_EXTRA_PIDS+=($!)
fleet_pki
"$SIM" certs --pki "$FLEET_DIR/pki" --count "$N" 2>"$FLEET_DIR/certs.log" || fleet_die "certificates"
fleet_broker_start
fleet_trust tiny
fleet_controller_start

printf 'mode = pass\n' >"$FLEET_DIR/proxy.ctl"
"$PROXY" --to "127.0.0.1:$FLEET_MQTT_PORT" --port-file "$FLEET_DIR/proxy.port" \
  --ctl "$FLEET_DIR/proxy.ctl" 2>"$FLEET_DIR/proxy.log" &
FLEET_EXTRA_PIDS+=($!)
fleet_wait 10 test -s "$FLEET_DIR/proxy.port" || fleet_die "faultproxy did not start"

cat >"$FLEET_DIR/fleet.ini" <<INI
[fleet]
model = tiny
version = 1.0
real_fetch = 0.2
telemetry_s = 10
classes = pi

[pi]
arch = aarch64
labels = site=lab
fetch_ms = 1500
trial_ms = 1000
INI
sim_start simA "$FLEET_DIR/fleet.ini" --first 0 --count "$NA"
SIM_A=$SIM_PID
stA="$FLEET_DIR/sim.status"
"$SIM" run --uri "ssl://127.0.0.1:$(cat "$FLEET_DIR/proxy.port")" --pki "$FLEET_DIR/pki" \
  --trust "$FLEET_DIR/trust" --scenario "$FLEET_DIR/fleet.ini" --first "$NA" --count "$NB" \
  --status "$FLEET_DIR/simB.status" >>"$FLEET_DIR/simB.log" 2>&1 &
FLEET_EXTRA_PIDS+=($!)
st() { jq -r "$2" "$1" 2>/dev/null; }
ge() { [ "$(st "$1" "$2")" -ge "$3" ] 2>/dev/null; }
check "group A ($NA, direct) registers" fleet_wait 60 ge "$stA" .registered "$NA"
check "group B ($NB, through the proxy) registers" fleet_wait 60 ge "$FLEET_DIR/simB.status" .registered "$NB"
devs() { curl -s -m 20 -H "Authorization: Bearer $FLEET_RT" "$FLEET_URL/api/v1/devices" | jq "$1" 2>/dev/null; }
# B's ids: sim-000NA .. ; online count of group B at the controller
b_online() { devs "[.devices[] | select(.online and (.id | ltrimstr(\"sim-\") | tonumber) >= $NA)] | length"; }
check "the controller sees all $N online" fleet_wait 30 bash -c "[ \"\$(curl -s -m 20 -H 'Authorization: Bearer $FLEET_RT' '$FLEET_URL/api/v1/devices' | jq '[.devices[] | select(.online)] | length')\" = $N ]"

sim_bundle 1.1 2 || fleet_die "bundle"
r=$(fleet_rollout_create '{"model":"tiny","version":"1.1","waves":[30,100],"soak_s":0,"max_concurrent":200,"max_failure_rate":0.1,"min_sample":5}')
check "rollout created ($r)" [ -n "$r" ]
sleep 1
printf 'mode = reject\n' >"$FLEET_DIR/proxy.ctl"
echo "partition: group B cut off at $(date +%T)"
check "group B goes offline at the controller (last wills)" fleet_wait 20 bash -c "[ \"\$(curl -s -m 20 -H 'Authorization: Bearer $FLEET_RT' '$FLEET_URL/api/v1/devices' | jq '[.devices[] | select(.online and (.id | ltrimstr(\"sim-\") | tonumber) >= $NA)] | length')\" = 0 ]"
sleep 15
echo "during the partition: $(fleet_rollout_state "$r") wave $(rollout_field "$r" .wave) $(rollout_field "$r" '.counts | tojson')"
check "the rollout waits: still running" rollout_is "$r" running
wave0=$(rollout_field "$r" .wave)
b_in_wave=$(( $(rollout_field "$r" .counts.in_progress) ))
check "no failure counted for the unreachable devices, the gate holds" [ "$(rollout_field "$r" .counts.failed)" = 0 ]
check "the wave waits for the cut-off devices (wave $wave0: $b_in_wave in progress, wave not done)" \
  bash -c "[ $b_in_wave -gt 0 ] && [ $(rollout_field "$r" .counts.succeeded) -lt $N ] && [ '$(rollout_field "$r" .wave_done_at)' = null ]"
check "group A devices that were sent the release installed it ($(st "$stA" .versions | tr -d ' \n'))" \
  ge "$stA" '.versions["1.1"] // 0' 1

printf 'mode = pass\n' >"$FLEET_DIR/proxy.ctl"
echo "partition healed at $(date +%T)"
check "group B comes back (<= 90 s: reconnect backoff up to 60 s)" fleet_wait 90 ge "$FLEET_DIR/simB.status" .connected "$NB"
check "the rollout completes after the partition (<= 90 s)" fleet_wait 90 rollout_done "$r"
echo "after: $(fleet_rollout_state "$r") $(rollout_field "$r" '.counts | tojson')"
check "... state completed" rollout_is "$r" completed
check "group A all on 1.1" fleet_wait 20 bash -c "[ \"\$(jq -r '.versions[\"1.1\"]' '$stA')\" = $NA ]"
check "group B all on 1.1" fleet_wait 20 bash -c "[ \"\$(jq -r '.versions[\"1.1\"]' '$FLEET_DIR/simB.status')\" = $NB ]"
check "no device without a working model" bash -c "[ $(st "$stA" .no_model) = 0 ] && [ $(st "$FLEET_DIR/simB.status" .no_model) = 0 ]"
check "group B got its deploy exactly once per command (duplicates dropped: $(st "$FLEET_DIR/simB.status" .dup_cmds))" \
  [ "$(st "$FLEET_DIR/simB.status" .verify_fail)" = 0 ]
finish || FLEET_FAILED=1
[ -z "$FLEET_FAILED" ]
