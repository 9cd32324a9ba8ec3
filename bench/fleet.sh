#!/usr/bin/env bash
# Fleet figures (Flotilla issue 11, docs/scale.md), on 127.0.0.1: a real
# mosquitto (mutual TLS + the Flotilla ACL), a real flotilla-controller and
# flotilla-sim with N devices (each its own TLS connection and certificate),
# for each N in BENCH_SIZES (default "1000 5000 10000"):
#  1. connect: seconds until every device is connected, until every
#     device's retained state is acknowledged by the broker, and until the
#     controller counts them all online;
#  2. ingestion: state and telemetry records stored per second by the
#     controller over BENCH_INGEST_S (30) with every device sending metrics
#     every BENCH_TELE_S (30) seconds;
#  3. a staged rollout of tiny 1.1 to 100 % in waves 1,10,50,100 % (soak 0,
#     max_concurrent N): seconds per wave (wave change seen by polling every
#     0.2 s) and in total; 1 % of the devices pull every chunk for real;
#  4. halt: a release 1.2 whose acceptance fails on one class (20 % of the
#     fleet), rollout gate min_sample 1, max_failure_rate 0 (the first failure
#     crosses the threshold): ms from the simulator publishing the first
#     failed state to the rollout being seen halted (polled every 0.1 s);
#     target <= 2000 ms;
#  5. no lost event: events made = acknowledged, controller inserted >= acked;
#  6. controller RSS (now, peak), CPU seconds, broker RSS, simulator RSS/CPU.
#
#   bench/fleet.sh [BUILD_DIR (build/dev)]
#   BENCH_SIZES ("1000 5000 10000"), BENCH_PKI (/tmp/flotilla-bench-pki: device
#   certificates are cached there, issuing takes ~40 ms each), BENCH_RATE
#   (connects started per second, 1000), BENCH_LIMIT_S (per size, 900),
#   BENCH_KEEP=1 keeps the work directories.
# Descriptors: the broker needs one per device (sizes over `ulimit -n` - 64
# are skipped with a message); a simulator process three per device
# (docs/scale.md), so the fleet is split over ceil(N / ((limit - 64) / 3))
# flotilla-sim processes, whose status files are added up.
set -uo pipefail
B=$(cd "${1:-build/dev}" && pwd) || { echo "fleet bench: no build directory ${1:-build/dev}" >&2; exit 1; }
FLOTILLA=$B/controller/cli/flotilla SIM=$B/tests/sim/flotilla-sim MKMODEL=$B/runtime/tools/mkmodel
export FLEET_FLOTILLA=$FLOTILLA FLEET_CONTROLLER_BIN=$B/controller/flotilla-controller FLEET_AGENT_BIN=$B/agent/flotilla-agent
for x in "$FLOTILLA" "$SIM" "$MKMODEL" "$FLEET_CONTROLLER_BIN" "$FLEET_AGENT_BIN"; do
  [ -x "$x" ] || { echo "fleet bench: $x not built" >&2; exit 1; }
done
here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/.." && pwd)
SIZES=${BENCH_SIZES:-1000 5000 10000}
PKI=${BENCH_PKI:-/tmp/flotilla-bench-pki}
RATE=${BENCH_RATE:-1000}
LIMIT=${BENCH_LIMIT_S:-900}
TELE_S=${BENCH_TELE_S:-30}
INGEST_S=${BENCH_INGEST_S:-30}
for n in $SIZES $RATE $LIMIT $TELE_S $INGEST_S; do
  case $n in ''|*[!0-9]*) echo "fleet bench: sizes, rates and times are numbers" >&2; exit 2 ;; esac
done
ulimit -n "$(ulimit -Hn)" 2>/dev/null
FDMAX=$(ulimit -n)
PER_PROC=$(( (FDMAX - 64) / 3 ))
ms() { date +%s%3N; }

# ---------------------------------------------------------------- certificates
max=0
for n in $SIZES; do [ "$n" -gt "$max" ] && [ $((n + 64)) -le "$FDMAX" ] && max=$n; done
mkdir -p "$PKI"
chmod 0755 "$PKI"
if [ ! -s "$PKI/ca.crt" ]; then
  "$FLOTILLA" pki init --dir "$PKI" >/dev/null &&
  "$FLOTILLA" pki issue-server --dir "$PKI" --dns localhost --ip 127.0.0.1 >/dev/null &&
  "$FLOTILLA" pki issue-controller --dir "$PKI" >/dev/null || { echo "fleet bench: pki" >&2; exit 1; }
fi
have=$(ls "$PKI/devices" 2>/dev/null | grep -c '\.key$')
if [ "$have" -lt "$max" ]; then
  echo "issuing device certificates up to $max in $PKI (8 processes; kept for later runs)"
  t=$(ms); per=$(( (max + 7) / 8 )); pids=()
  for i in 0 1 2 3 4 5 6 7; do
    f=$((i * per)); c=$(( f + per > max ? max - f : per ))
    [ "$c" -gt 0 ] || continue
    "$SIM" certs --pki "$PKI" --first "$f" --count "$c" 2>/dev/null & pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || { echo "fleet bench: certs failed" >&2; exit 1; }; done
  echo "  done in $(( ($(ms) - t) / 1000 )) s"
fi

. "$src/packaging/demo/fleet-lib.sh"
. "$src/tests/integration/sim_lib.sh"
if [ -n "${BENCH_KEEP:-}" ]; then export FLEET_KEEP=1; fi

# jq over every simulator status file of the run (an array)
agg() { jq -s "$1" "$FLEET_DIR"/sim.*.status 2>/dev/null; }
ALL_MS_CONNECTED='if any(.[]; .all_connected_ms < 0) then -1 else ([.[] | .all_connected_ms + .start_wall_ms] | max) - ([.[].start_wall_ms] | min) end'
ALL_MS_REGISTERED='if any(.[]; .all_registered_ms < 0) then -1 else ([.[] | .all_registered_ms + .start_wall_ms] | max) - ([.[].start_wall_ms] | min) end'
all_registered() { [ "$(agg 'length')" = "$SIM_K" ] && [ "$(agg "$ALL_MS_REGISTERED")" -ge 0 ] 2>/dev/null; }

run_size() { # N (in a subshell: fleet_cleanup exits)
  local N=$1
  fleet_init "fleet_bench_$N"
  ( sleep "$LIMIT"; echo "fleet bench: $N: time limit ${LIMIT} s reached" >&2; kill -TERM $$ ) >/dev/null 2>&1 &
  FLEET_EXTRA_PIDS+=($!)
  mkdir -p "$FLEET_DIR/pki"
  cp -a "$PKI/ca.crt" "$PKI/ca.key" "$PKI/server.crt" "$PKI/server.key" \
    "$PKI/controller.crt" "$PKI/controller.key" "$FLEET_DIR/pki/"
  ln -s "$PKI/devices" "$FLEET_DIR/pki/devices"
  fleet_broker_start
  fleet_trust tiny
  fleet_controller_start
  local CPID=$FLEET_CTL_PID BPID
  BPID=$(broker_pid)
  cat >"$FLEET_DIR/fleet.ini" <<INI
[fleet]
devices = $N
model = tiny
version = 1.0
real_fetch = 0.01
telemetry_s = $TELE_S
connect_rate = $RATE
classes = pi, nuc, bad

[pi]
weight = 4
arch = aarch64
labels = site=plant-7
fetch_ms = 2000
trial_ms = 2000

[nuc]
weight = 4
arch = x86_64
labels = site=plant-9
fetch_ms = 1000
trial_ms = 2000

[bad]
weight = 2
arch = aarch64
labels = site=lab
fetch_ms = 1000
trial_ms = 2000
fail_version = 1.2
fail_accept = 1.0
INI
  local c0 t0 t_online
  c0=$(proc_cpu_s "$CPID")
  t0=$(ms)
  local k=0 f=0 cnt SIMS=()
  while [ "$f" -lt "$N" ]; do
    cnt=$(( N - f < PER_PROC ? N - f : PER_PROC ))
    "$SIM" run --uri "ssl://127.0.0.1:$FLEET_MQTT_PORT" --pki "$FLEET_DIR/pki" --trust "$FLEET_DIR/trust" \
      --scenario "$FLEET_DIR/fleet.ini" --first "$f" --count "$cnt" --status "$FLEET_DIR/sim.$k.status" \
      >>"$FLEET_DIR/sim.$k.log" 2>&1 &
    SIMS+=($!); FLEET_EXTRA_PIDS+=($!)
    f=$((f + cnt)); k=$((k + 1))
  done
  SIM_K=$k
  echo "N=$N: $k simulator process(es) of at most $PER_PROC devices"
  online() { [ "$(fleet_metric 'flotilla_devices{state="online"}')" = "$N" ]; }
  fleet_wait $((LIMIT / 3)) all_registered ||
    { echo "fleet bench: $N: the simulator did not register all ($(agg '{connected: ([.[].connected] | add), registered: ([.[].registered] | add)} | tojson'))"; FLEET_FAILED=1; return 1; }
  local conn reg load on
  conn=$(agg "$ALL_MS_CONNECTED") reg=$(agg "$ALL_MS_REGISTERED")
  load=$(cat "$FLEET_DIR"/sim.*.log | grep -o 'loaded in [0-9]* ms' | sort -k3 -n | tail -1)
  if fleet_wait 60 online; then
    t_online="<= $(( $(ms) - $(agg '[.[].start_wall_ms] | min') )) ms"
  else
    on=$(fleet_metric 'flotilla_devices{state="online"}')
    t_online="NOT ALL: $on of $N after $(( ($(ms) - $(agg '[.[].start_wall_ms] | min')) / 1000 )) s"
  fi
  echo "N=$N connect (from the first connect; certificates $load): all connected $conn ms, all states acked by the broker $reg ms, controller counts all online $t_online"
  echo "N=$N controller: states ok $(fleet_metric 'flotilla_state_messages_total{result="ok"}'), MQTT messages dropped for a full queue $(fleet_metric 'flotilla_mqtt_dropped_total{reason="queue_full"}')"
  local c1 rss_reg
  c1=$(proc_cpu_s "$CPID") rss_reg=$(proc_rss_kb "$CPID")

  # ingestion
  local r0 s0 r1 s1 ti
  r0=$(fleet_metric 'flotilla_telemetry_records_total{result="inserted"}')
  s0=$(fleet_metric 'flotilla_state_messages_total{result="ok"}')
  ti=$(ms)
  sleep "$INGEST_S"
  r1=$(fleet_metric 'flotilla_telemetry_records_total{result="inserted"}')
  s1=$(fleet_metric 'flotilla_state_messages_total{result="ok"}')
  local dt=$(( $(ms) - ti ))
  local rec_rate st_rate
  rec_rate=$(( (r1 - r0) * 1000 / dt )) st_rate=$(( (s1 - s0) * 1000 / dt ))
  echo "N=$N ingestion: $rec_rate telemetry records/s (offered $(( N * 2 / TELE_S ))/s), $st_rate states/s, controller CPU $(awk -v a="$c1" -v b="$(proc_cpu_s "$CPID")" -v t="$dt" 'BEGIN {printf "%.0f%%", (b - a) * 100000 / t}')"

  # rollout to 100 %
  sim_bundle 1.1 2 || { FLEET_FAILED=1; return 1; }
  local r tr w last_w wt waves=()
  r=$(fleet_rollout_create "{\"model\":\"tiny\",\"version\":\"1.1\",\"waves\":[1,10,50,100],\"soak_s\":0,\"max_concurrent\":$N,\"max_failure_rate\":0.1,\"min_sample\":5}") ||
    { FLEET_FAILED=1; return 1; }
  local c2; c2=$(proc_cpu_s "$CPID")
  tr=$(ms); wt=$tr; last_w=0
  while :; do
    local doc state
    doc=$(fleet_rollout "$r")
    state=$(jq -r .state <<<"$doc" 2>/dev/null)
    w=$(jq -r .wave <<<"$doc" 2>/dev/null)
    if [ "$state" != running ]; then
      waves+=("$(( $(ms) - wt ))"); break
    fi
    if [ -n "$w" ] && [ "$w" != "$last_w" ]; then
      waves+=("$(( $(ms) - wt ))"); wt=$(ms); last_w=$w
    fi
    [ $(( $(ms) - tr )) -lt $(( LIMIT * 1000 / 2 )) ] || { state=timeout; break; }
    sleep 0.2
  done
  local total=$(( $(ms) - tr ))
  echo "N=$N rollout 1.1: $state in $total ms; per wave (1,10,50,100 %): ${waves[*]} ms; $(rollout_field "$r" '.counts | {targets, attempted, succeeded, failed, in_progress} | tojson')"
  echo "N=$N rollout: controller CPU $(awk -v a="$c2" -v b="$(proc_cpu_s "$CPID")" 'BEGIN {printf "%.1f", b - a}') s over the rollout, chunks fetched for real $(agg '[.[].chunks_ok] | add') (bad $(agg '[.[].chunks_bad] | add'))"
  [ "$state" = completed ] || FLEET_FAILED=1

  # halt
  sim_bundle 1.2 3 || { FLEET_FAILED=1; return 1; }
  local h th halt_ms=NA
  h=$(fleet_rollout_create "{\"model\":\"tiny\",\"version\":\"1.2\",\"waves\":[10,100],\"soak_s\":0,\"max_concurrent\":$N,\"max_failure_rate\":0,\"min_sample\":1}") ||
    { FLEET_FAILED=1; return 1; }
  th=$(ms)
  while [ $(( $(ms) - th )) -lt 120000 ]; do
    if [ "$(fleet_rollout_state "$h")" = halted ]; then
      local seen ff _; seen=$(ms)
      for _ in $(seq 30); do # the status files are rewritten every second
        ff=$(agg '[.[].first_fail_wall_ms | select(. > 0)] | min // 0')
        [ "${ff:-0}" -gt 0 ] && { halt_ms=$(( seen - ff )); break; }
        sleep 0.1
      done
      break
    fi
    sleep 0.1
  done
  echo "N=$N halt: $(fleet_rollout_state "$h") ${halt_ms} ms after the first failed state was published (target <= 2000); $(rollout_field "$h" '.counts | {targets, attempted, succeeded, failed, in_progress} | tojson')"
  [ "$halt_ms" != NA ] || FLEET_FAILED=1

  # events: wait (bounded) until the devices' batches are acknowledged
  evs_acked() { [ "$(agg '[.[].events_made] | add')" = "$(agg '[.[].events_acked] | add')" ]; }
  fleet_wait 30 evs_acked
  sleep 2
  local em ea ma ins miss drops
  read -r em ea ma < <(agg '[([.[].events_made] | add), ([.[].events_acked] | add), ([.[].metrics_acked] | add)] | map(tostring) | join(" ")' | tr -d '"')
  ins=$(fleet_metric 'flotilla_telemetry_records_total{result="inserted"}')
  miss=$(fleet_metric flotilla_telemetry_missing_seqs)
  drops=$(grep -c "Outgoing messages are being dropped for client flotilla-controller" "$FLEET_DIR/pki/broker/mosquitto.log")
  echo "N=$N events: made $em, acked by the broker $ea (not acknowledged after 30 s: $((em - ea))); records inserted $ins, acked $(( ea + ma )); controller missing seqs $miss; broker log 'dropped for flotilla-controller' x$drops"
  echo "N=$N memory: controller RSS $(( $(proc_rss_kb "$CPID") / 1024 )) MiB (peak $(( $(proc_hwm_kb "$CPID") / 1024 )), after registration $(( rss_reg / 1024 ))), CPU $(awk -v a="$c0" -v b="$(proc_cpu_s "$CPID")" 'BEGIN {printf "%.1f", b - a}') s total; broker RSS $(( $(proc_rss_kb "$BPID") / 1024 )) MiB; sim RSS $(( $(agg '[.[].rss_kb] | add') / 1024 )) MiB, CPU $(agg '[.[].cpu_s] | add') s"
  local p
  for p in "${SIMS[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for p in "${SIMS[@]}"; do timeout 30 tail --pid="$p" -f /dev/null; done
}

for n in $SIZES; do
  if [ $((n + 64)) -gt "$FDMAX" ]; then
    echo "N=$n skipped: needs $((n + 64)) file descriptors, the limit here is $FDMAX"
    continue
  fi
  ( run_size "$n" ) || echo "N=$n: FAILED (see above; BENCH_KEEP=1 keeps the logs)"
done
