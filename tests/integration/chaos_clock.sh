#!/usr/bin/env bash
# Clock jumps on a device (issue 11, docs/scale.md "Chaos"): a real
# `flotilla-agent run` under libfaketime (LD_PRELOAD, Debian package
# libfaketime) whose wall clock the test steps at run time through a
# timestamp file (FAKETIME_TIMESTAMP_FILE, FAKETIME_NO_CACHE=1: re-read at
# every call). DONT_FAKE_MONOTONIC=1: only CLOCK_REALTIME (time(),
# gettimeofday(), clock_gettime(CLOCK_REALTIME)) moves, as when a device's
# RTC or NTP steps the clock; CLOCK_MONOTONIC does not.
#
# 1. rollout of tiny 1.0 (1 MiB data at 128 KiB/s): mid-fetch the clock
#    jumps 2 h forward, then 3 h back (to 1 h behind the real time), then to
#    the real time again: the rollout completes (fetch, acceptance and
#    trial timers are monotonic), and the controller stores clock_jump
#    events, forward and backward.
# 2. TLS while the clock is 3 h behind, before the certificates' notBefore
#    (issued 5 min backdated at the start of the test): the broker is
#    restarted, the agent's reconnects fail with a clear error naming the
#    certificate's validity ("not yet valid" / "not valid before"); when
#    the clock returns it reconnects by itself.
# 3. rollout of tiny 1.1 with the clock 6 h ahead during the fetch and back
#    after it: completes. The local API answers; telemetry arrived exactly
#    once; `flotilla-agent check` after a clean stop finds 0 problems.
# SKIP (77) without libfaketime.
#
#   chaos_clock.sh FLOTILLA CONTROLLER AGENT MKMODEL
set -uo pipefail
if [ $# -ne 4 ]; then
  echo "usage: chaos_clock.sh FLOTILLA CONTROLLER AGENT MKMODEL" >&2
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
FT_LIB=
for f in /usr/lib/*/faketime/libfaketimeMT.so.1 /usr/lib/faketime/libfaketimeMT.so.1; do
  [ -r "$f" ] && { FT_LIB=$f; break; }
done
[ -n "$FT_LIB" ] || chaos_skip "libfaketime not installed (bash packaging/deps.sh)"
probe=$(mktemp) && echo "+2h" >"$probe"
ahead=$(LD_PRELOAD=$FT_LIB FAKETIME_TIMESTAMP_FILE=$probe FAKETIME_NO_CACHE=1 DONT_FAKE_MONOTONIC=1 date +%s)
rm -f "$probe"
[ $((ahead - $(date +%s))) -gt 7000 ] || chaos_skip "libfaketime does not move the clock here"
t0=$SECONDS
ID=ck1

chaos_init chaos_clock
fleet_pki $ID
fleet_broker_start
fleet_trust tiny
fleet_controller_start
FT=$FLEET_DIR/faketime
echo "+0" >"$FT"
# An ASan build refuses a preloaded library ahead of its runtime unless told.
CHAOS_ENV="LD_PRELOAD=$FT_LIB FAKETIME_TIMESTAMP_FILE=$FT FAKETIME_NO_CACHE=1 DONT_FAKE_MONOTONIC=1 FAKETIME_FORCE_MONOTONIC_FIX=0 ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0"
chaos_agent_start $ID "" 127.0.0.1 "bandwidth = 131072"
check "agent (under libfaketime) online" fleet_wait_online 60 $ID
clock() { echo "$1" >"$FT.new" && mv "$FT.new" "$FT"; echo "clock of $ID: $1 (at $((SECONDS - t0)) s)"; }
check "the timestamp file moves the agent's clock (+0: real time)" \
  bash -c "d=\$(( \$(env $CHAOS_ENV date +%s) - \$(date +%s) )); [ \${d#-} -lt 5 ]"
jumps() { # REASON: clock_jump events stored with that reason
  chaos_db "SELECT COUNT(*) FROM telemetry WHERE device='$ID' AND kind='event:clock_jump'
            AND json_extract(body,'\$.reason')='$1'"
}
runs() { [ "$(fleet_agent_version $ID tiny)" = "$1" ]; }
offline() { [ "$(fleet_device $ID | jq -r .device.online)" = false ]; }
has_jumps() { [ "$(jumps forward)" -ge "$1" ] && [ "$(jumps backward)" -ge "$2" ]; }
body='{"model":"tiny","version":"%s","waves":[100],"soak_s":0,"max_concurrent":10,"max_failure_rate":0.5,"min_sample":1}'

# ---------------------------------------------------------------- 1
echo "--- 1: jumps of +2 h and -3 h in the middle of a rollout"
chaos_bundle 1.0 1 1024 || fleet_die "bundle 1.0"
r1=$(fleet_rollout_create "$(printf "$body" 1.0)")
check "rollout of 1.0 created ($r1)" [ -n "$r1" ]
check "1: the agent is fetching" chaos_wait 60 chaos_fetching $ID
clock +2h
sleep 3
check "1: still fetching or done after the forward jump ($(chaos_install_state $ID))" \
  bash -c "case '$(chaos_install_state $ID)' in FETCHING|STAGED|SWITCHING|TRIAL|COMMITTED) ;; *) exit 1;; esac"
clock -1h
sleep 3
clock +0
check "1: the rollout completes (<= 120 s)" chaos_wait 120 rollout_done "$r1"
echo "rollout 1.0: $(fleet_rollout_state "$r1") $(rollout_field "$r1" '.counts | tojson')"
check "1: ... completed" rollout_is "$r1" completed
check "1: the agent runs 1.0" chaos_wait 30 runs 1.0
check "1: clock_jump events at the controller: forward and backward" chaos_wait 60 has_jumps 1 1
chaos_db "SELECT json_extract(body,'\$.reason') || ' ' || json_extract(body,'\$.details.jump_s') || ' s'
          FROM telemetry WHERE device='$ID' AND kind='event:clock_jump' ORDER BY seq" | sed 's/^/1: clock_jump /'

# ---------------------------------------------------------------- 2
echo "--- 2: TLS with the clock before the certificates' notBefore"
"$FLEET_BROKER_PKG/stop-broker.sh" "$FLEET_DIR/pki" >/dev/null 2>&1; FLEET_BROKER_UP=
clock -3h
lines=$(wc -l <"$FLEET_DIR/$ID/agent.log")
FL_BROKER_WAIT_S=10 "$FLEET_BROKER_PKG/start-broker.sh" "$FLEET_DIR/pki" "$FLEET_MQTT_PORT" \
  >"$FLEET_DIR/broker-restart.out" 2>&1 && FLEET_BROKER_UP=1
check "2: broker back" [ -n "$FLEET_BROKER_UP" ]
tls_error() { tail -n +"$lines" "$FLEET_DIR/$ID/agent.log" | grep -qiE 'not yet valid|not valid before'; }
check "2: the agent's reconnects fail, naming the certificate validity" chaos_wait 30 tls_error
tail -n +"$lines" "$FLEET_DIR/$ID/agent.log" | grep -iE 'not yet valid|not valid before' | head -2 | sed 's/^.*warn: /2: /'
check "2: the controller sees it offline" chaos_wait 40 offline
clock +0
check "2: the clock returns: the agent reconnects by itself (<= 90 s)" fleet_wait_online 90 $ID
tail -n +"$lines" "$FLEET_DIR/$ID/agent.log" | grep 'mqtt: connected' | tail -1 | sed 's/^.*info: /2: /'

# ---------------------------------------------------------------- 3
echo "--- 3: the clock 6 h ahead during a fetch"
chaos_bundle 1.1 2 1024 || fleet_die "bundle 1.1"
r2=$(fleet_rollout_create "$(printf "$body" 1.1)")
check "rollout of 1.1 created ($r2)" [ -n "$r2" ]
check "3: the agent is fetching" chaos_wait 60 chaos_fetching $ID
clock +6h
check "3: the rollout completes with the clock 6 h ahead (<= 120 s)" chaos_wait 120 rollout_done "$r2"
clock +0
echo "rollout 1.1: $(fleet_rollout_state "$r2") $(rollout_field "$r2" '.counts | tojson')"
check "3: ... completed" rollout_is "$r2" completed
check "3: the agent runs 1.1" chaos_wait 30 runs 1.1
check "3: its local API answers a completion" chaos_wait 30 chaos_generate_all $ID
check "3: more clock_jump events (2 forward, 2 backward at least)" chaos_wait 60 has_jumps 2 2
echo "$ID: events $(chaos_events $ID)"
check "telemetry reached the controller exactly once" chaos_tele_once $ID
check "after a clean stop, flotilla-agent check finds 0 problems" chaos_agent_check $ID
if [ "$fails" != 0 ]; then
  FLEET_FAILED=1
  echo "--- agent log (tail)"; tail -n 25 "$FLEET_DIR/$ID/agent.log"
fi
echo "total $((SECONDS - t0)) s"
finish
