#!/usr/bin/env bash
# A simulated fleet against the real thing: mosquitto (mutual TLS + ACL),
# flotilla-controller, and flotilla-sim with SIM_N devices (default 200),
# each its own MQTT connection and certificate (docs/scale.md).
#
#   sim_fleet.sh FLOTILLA CONTROLLER AGENT MKMODEL SIM
#
# Checks: every device registers and is online at the controller; a staged
# rollout of tiny 1.1 completes over the whole fleet (10 % of the devices
# pull every chunk for real, verified); a release whose acceptance fails on
# one hardware class (x86_64) halts its rollout by the gate, devices of the
# other class that took it keep it, nobody ends without a model; telemetry
# events all acknowledged and counted by the controller; a clean stop marks
# the fleet offline (last will).
set -uo pipefail
if [ $# -ne 5 ]; then
  echo "usage: sim_fleet.sh FLOTILLA CONTROLLER AGENT MKMODEL SIM" >&2
  exit 2
fi
FLOTILLA=$1 SIM=$5 MKMODEL=$4
export FLEET_FLOTILLA=$1 FLEET_CONTROLLER_BIN=$2 FLEET_AGENT_BIN=$3
here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../.." && pwd)
. "$here/lib.sh"
. "$src/packaging/demo/fleet-lib.sh"
. "$here/sim_lib.sh"
N=${SIM_N:-200}

fleet_init sim_fleet
( sleep "${FL_TEST_WATCHDOG_S:-280}"; echo "FAIL: watchdog"; kill -TERM $$ ) >/dev/null 2>&1 &
FLEET_EXTRA_PIDS+=($!)
fleet_pki
"$SIM" certs --pki "$FLEET_DIR/pki" --count "$N" 2>"$FLEET_DIR/certs.log" ||
  { cat "$FLEET_DIR/certs.log"; fleet_die "device certificates"; }
fleet_broker_start
fleet_trust tiny
fleet_controller_start
echo "broker 127.0.0.1:$FLEET_MQTT_PORT, controller $FLEET_URL, $N simulated devices"

cat >"$FLEET_DIR/fleet.ini" <<INI
[fleet]
devices = $N
prefix = sim-
model = tiny
version = 1.0
sequence = 1
real_fetch = 0.1
telemetry_s = 5
connect_rate = 400
classes = pi, nuc

[pi]
weight = 1
arch = aarch64
ram_mb = 3900
labels = site=plant-7,hw=pi
fetch_ms = 1500
trial_ms = 1000

[nuc]
weight = 1
arch = x86_64
ram_mb = 16000
labels = site=plant-7,hw=nuc
fetch_ms = 800
trial_ms = 1000
fail_version = 1.2
fail_accept = 1.0
INI

# Bad input: refused with a message, nothing started.
out=$("$SIM" run --uri tcp://127.0.0.1:1 --pki "$FLEET_DIR/pki" --trust "$FLEET_DIR/trust" 2>&1); rc=$?
check "a non-TLS uri is refused (exit $rc: $out)" [ $rc -eq 2 ]
printf '[fleet]\ndevices = many\n' >"$FLEET_DIR/bad.ini"
out=$("$SIM" run --uri "ssl://127.0.0.1:$FLEET_MQTT_PORT" --pki "$FLEET_DIR/pki" --trust "$FLEET_DIR/trust" \
      --scenario "$FLEET_DIR/bad.ini" 2>&1); rc=$?
check "a bad scenario is refused with the key named (exit $rc: $out)" \
  bash -c "[ $rc -eq 2 ] && grep -q 'fleet.devices' <<<'$out'"

t0=$(date +%s%N)
sim_start sim "$FLEET_DIR/fleet.ini"
check "all $N devices connect and their state is acknowledged (<= 90 s)" fleet_wait 90 sim_ge .registered "$N"
t1=$(date +%s%N)
echo "connect + register: $(( (t1 - t0) / 1000000 )) ms (sim: all connected at $(sim_status .all_connected_ms) ms)"
devs() { curl -s -m 20 -H "Authorization: Bearer $FLEET_RT" "$FLEET_URL/api/v1/devices" | jq "$1" 2>/dev/null; }
online_all() { [ "$(devs '[.devices[] | select(.online)] | length')" = "$N" ]; }
check "the controller has $N devices, all online" fleet_wait 30 online_all
check "... and the metric says so" [ "$(fleet_metric 'flotilla_devices{state="online"}')" = "$N" ]
check "... with their class (arch, labels) from the scenario" \
  [ "$(devs '[.devices[] | select(.labels.site == "plant-7" and (.arch == "aarch64" or .arch == "x86_64"))] | length')" = "$N" ]
v10() { [ "$(fleet_metric 'flotilla_model_version_devices{model="tiny",version="1.0"}')" = "$N" ]; }
check "... all on tiny 1.0" fleet_wait 30 v10
check "the simulator saw no refused publish" [ "$(sim_status .pub_refused)" = 0 ]

# ---------------------------------------------------------------- rollout 1.1
sim_bundle 1.1 2 || fleet_die "bundle 1.1"
r1=$(fleet_rollout_create '{"model":"tiny","version":"1.1","waves":[10,50,100],"soak_s":0,"max_concurrent":500,"max_failure_rate":0.1,"min_sample":5}')
check "rollout of tiny 1.1 created ($r1)" [ -n "$r1" ]
ts=$(date +%s%N)
check "rollout $r1 completes over the fleet (<= 150 s)" fleet_wait 150 rollout_is "$r1" completed
te=$(date +%s%N)
echo "rollout 1.1: $(( (te - ts) / 1000000 )) ms; $(rollout_field "$r1" '.counts | tojson')"
check "rollout $r1: $N attempted-or-done, none failed" \
  [ "$(rollout_field "$r1" '[.counts.succeeded, .counts.failed] | join(" ")')" = "$N 0" ]
check "the simulator reports all $N on 1.1" [ "$(sim_status '.versions["1.1"]')" = "$N" ]
v11() { [ "$(fleet_metric 'flotilla_model_version_devices{model="tiny",version="1.1"}')" = "$N" ]; }
check "the controller counts $N devices on tiny 1.1" fleet_wait 20 v11
echo "fetched for real: $(sim_status .fetch_bytes) bytes, $(sim_status .chunks_ok) chunks, $(sim_status .chunk_reqs) requests"
check "some devices pulled chunks for real, all verified" \
  bash -c "[ $(sim_status .chunks_ok) -gt 0 ] && [ $(sim_status .chunks_bad) = 0 ] && [ $(sim_status .frames_bad) = 0 ]"

# ---------------------------------------------------------------- bad release 1.2
sim_bundle 1.2 3 || fleet_die "bundle 1.2"
r2=$(fleet_rollout_create '{"model":"tiny","version":"1.2","waves":[10,50,100],"soak_s":0,"max_concurrent":500,"max_failure_rate":0.2,"min_sample":5}')
check "rollout of tiny 1.2 created ($r2)" [ -n "$r2" ]
check "rollout $r2 is halted by the failure gate (<= 60 s)" fleet_wait 60 rollout_done "$r2"
check "... its state is halted ($(fleet_rollout_state "$r2"))" rollout_is "$r2" halted
echo "rollout 1.2: $(rollout_field "$r2" '.reason')"
att=$(rollout_field "$r2" .counts.attempted)
check "the halt stopped the rollout before the whole fleet ($att of $N attempted)" [ "$att" -lt "$N" ]
sleep 3 # in-flight installs land
check "no x86_64 device runs 1.2 (they all failed acceptance)" \
  [ "$(devs '[.devices[] | select(.arch == "x86_64" and .versions.tiny == "1.2")] | length')" = 0 ]
check "aarch64 devices that took 1.2 run it ($(devs '[.devices[] | select(.versions.tiny == "1.2")] | length'))" \
  [ "$(devs '[.devices[] | select(.arch == "aarch64" and .versions.tiny == "1.2")] | length')" -gt 0 ]
check "no device ends without a model (simulator)" [ "$(sim_status .no_model)" = 0 ]
check "every device runs 1.1 or 1.2 ($(sim_status .versions))" \
  [ "$(sim_status '[.versions["1.1"] // 0, .versions["1.2"] // 0] | add')" = "$N" ]
check "the controller registered rejected installs (failed > 0)" [ "$(rollout_field "$r2" .counts.failed)" -gt 0 ]

# ---------------------------------------------------------------- telemetry
ev_all() { [ "$(sim_status .events_acked)" = "$(sim_status .events_made)" ]; }
check "every event the simulator made was acknowledged ($(sim_status .events_made))" fleet_wait 20 ev_all
ins() { fleet_metric 'flotilla_telemetry_records_total{result="inserted"}'; }
recs() {
  local i; i=$(ins)
  [ "$i" -ge $(( $(sim_status .events_acked) + $(sim_status .metrics_acked) )) ] 2>/dev/null &&
  [ "$i" -le $(( $(sim_status .events_made) + $(sim_status .metrics_made) )) ]
}
check "the controller stored every acknowledged record once (no loss, no duplicate)" fleet_wait 20 recs
echo "telemetry: $(sim_status .events_acked) events, $(sim_status .metrics_acked) metric records acked; controller inserted $(ins), duplicates $(fleet_metric 'flotilla_telemetry_records_total{result="duplicate"}')"

# ---------------------------------------------------------------- clean stop
sim_stop
offline_all() { [ "$(devs '[.devices[] | select(.online)] | length')" = 0 ]; }
check "after the simulator stops, the last wills mark all $N offline" fleet_wait 30 offline_all
grep -q "Sanitizer" "$FLEET_DIR/sim.log" && bad "sanitizer report in sim.log: $(grep -m3 Sanitizer "$FLEET_DIR/sim.log")"
finish || FLEET_FAILED=1
[ -z "$FLEET_FAILED" ]
