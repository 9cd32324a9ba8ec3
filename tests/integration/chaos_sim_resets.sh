#!/usr/bin/env bash
# Chaos: a rollout over a flaky network. flotilla-sim devices reach the real
# mosquitto only through faultproxy (tests/sim/faultproxy.c) with 40 ms of
# latency each way and connection resets (each connection reset with
# probability 10 % every 10 s, i.e. 0.6 per minute); the controller talks
# to the broker directly. 30 % of the devices pull every chunk for real, so
# resets cut transfers in the middle.
#
#   chaos_sim_resets.sh FLOTILLA CONTROLLER AGENT MKMODEL SIM FAULTPROXY
#
# Checks: connections really are reset (proxy counters, device reconnects);
# the rollout completes on the whole fleet; every device ends on the new
# version with a working model; fetched chunks all verified; every event the
# devices made reaches the controller exactly once (inserted records equal
# to the records made, duplicates only counted as duplicates).
set -uo pipefail
if [ $# -ne 6 ]; then
  echo "usage: chaos_sim_resets.sh FLOTILLA CONTROLLER AGENT MKMODEL SIM FAULTPROXY" >&2
  exit 2
fi
FLOTILLA=$1 MKMODEL=$4 SIM=$5 PROXY=$6
export FLEET_FLOTILLA=$1 FLEET_CONTROLLER_BIN=$2 FLEET_AGENT_BIN=$3
here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../.." && pwd)
. "$here/lib.sh"
. "$src/packaging/demo/fleet-lib.sh"
. "$here/sim_lib.sh"
N=${SIM_N:-100}

fleet_init chaos_resets
( sleep "${FL_TEST_WATCHDOG_S:-280}"; echo "FAIL: watchdog"; kill -TERM $$ ) >/dev/null 2>&1 &
FLEET_EXTRA_PIDS+=($!)
fleet_pki
"$SIM" certs --pki "$FLEET_DIR/pki" --count "$N" 2>"$FLEET_DIR/certs.log" || fleet_die "certificates"
fleet_broker_start
fleet_trust tiny
fleet_controller_start

printf 'latency_ms = 40\nreset_per_min = 0\nmode = pass\n' >"$FLEET_DIR/proxy.ctl"
"$PROXY" --to "127.0.0.1:$FLEET_MQTT_PORT" --port-file "$FLEET_DIR/proxy.port" \
  --ctl "$FLEET_DIR/proxy.ctl" --seed 7 2>"$FLEET_DIR/proxy.log" &
PROXY_PID=$!
FLEET_EXTRA_PIDS+=("$PROXY_PID")
fleet_wait 10 test -s "$FLEET_DIR/proxy.port" || fleet_die "faultproxy did not start"
SIM_PORT=$(cat "$FLEET_DIR/proxy.port")

cat >"$FLEET_DIR/fleet.ini" <<INI
[fleet]
devices = $N
model = tiny
version = 1.0
real_fetch = 0.3
telemetry_s = 5
connect_rate = 200
seed = 3
classes = pi

[pi]
arch = aarch64
labels = site=lab
fetch_ms = 3000
trial_ms = 2000
INI
sim_start sim "$FLEET_DIR/fleet.ini"
check "all $N devices register through the proxy (40 ms latency)" fleet_wait 60 sim_ge .registered "$N"

# Resets on: 10 % of the connections every 10 s.
printf 'latency_ms = 40\nreset_per_min = 0.6\nmode = pass\n' >"$FLEET_DIR/proxy.ctl"
sim_bundle 1.1 2 || fleet_die "bundle"
r=$(fleet_rollout_create '{"model":"tiny","version":"1.1","waves":[10,50,100],"soak_s":2,"max_concurrent":50,"max_failure_rate":0.1,"min_sample":5}')
check "rollout created ($r)" [ -n "$r" ]
ts=$(date +%s)
check "the rollout completes under resets and latency (<= 180 s)" fleet_wait 180 rollout_done "$r"
echo "rollout: $(( $(date +%s) - ts )) s, $(fleet_rollout_state "$r"): $(rollout_field "$r" '.counts | tojson') $(rollout_field "$r" .reason)"
check "... state completed" rollout_is "$r" completed
kill -USR1 "$PROXY_PID"; sleep 0.5
resets=$(grep -o '[0-9]* reset' "$FLEET_DIR/proxy.log" | tail -1 | cut -d' ' -f1)
echo "proxy: $(tail -1 "$FLEET_DIR/proxy.log"); sim: $(sim_status '{connects, disconnects, chunk_timeouts, chunks_ok, chunks_bad} | tojson')"
check "connections were reset during the rollout ($resets)" [ "${resets:-0}" -gt 0 ]
check "devices reconnected ($(sim_status .connects) connects for $N devices)" [ "$(sim_status .connects)" -gt "$N" ]

# Calm again: let everything settle, then compare.
printf 'latency_ms = 0\nreset_per_min = 0\nmode = pass\n' >"$FLEET_DIR/proxy.ctl"
check "every device runs 1.1 (simulator: $(sim_status .versions | tr -d ' \n'))" \
  fleet_wait 30 bash -c "[ \"\$(jq -r '.versions[\"1.1\"]' '$FLEET_DIR/sim.status')\" = $N ]"
check "no device without a working model" [ "$(sim_status .no_model)" = 0 ]
v11() { [ "$(fleet_metric 'flotilla_model_version_devices{model="tiny",version="1.1"}')" = "$N" ]; }
check "the controller sees $N devices on 1.1" fleet_wait 30 v11
check "every chunk that arrived verified (bad $(sim_status .chunks_bad))" [ "$(sim_status .chunks_bad)" = 0 ]
check "real fetches happened ($(sim_status .chunks_ok) chunks)" [ "$(sim_status .chunks_ok)" -gt 0 ]
sim_stop # clean stop: every queued record is flushed first? no: compare what was acked
ins() { fleet_metric 'flotilla_telemetry_records_total{result="inserted"}'; }
made=$(( $(sim_status .events_made) + $(sim_status .metrics_made) ))
acked=$(( $(sim_status .events_acked) + $(sim_status .metrics_acked) ))
settled() { [ "$(ins)" -ge "$acked" ] 2>/dev/null; }
fleet_wait 15 settled
echo "telemetry: made $made, acked $acked, inserted $(ins), duplicates $(fleet_metric 'flotilla_telemetry_records_total{result="duplicate"}')"
check "events: all acknowledged ($(sim_status .events_acked) of $(sim_status .events_made))" \
  [ "$(sim_status .events_acked)" = "$(sim_status .events_made)" ]
check "the controller stored every acknowledged record exactly once ($(ins) inserted, $acked acked, $made made)" \
  bash -c "[ $(ins) -ge $acked ] && [ $(ins) -le $made ]"
finish || FLEET_FAILED=1
[ -z "$FLEET_FAILED" ]
