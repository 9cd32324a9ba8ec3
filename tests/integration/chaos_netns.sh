#!/usr/bin/env bash
# Chaos with real agents in network namespaces (issue 11, docs/scale.md
# "Chaos"): four `flotilla-agent run` processes, each in its own network
# namespace made by the test (veth pair, 10.231.I.2 inside, 10.231.I.1 on
# the root side); mosquitto (mutual TLS + ACL, listening on 0.0.0.0 at a
# random port: the namespaces reach it at their gateway address, which its
# certificate names) and the controller run in the root namespace. Faults
# are iptables rules inside the namespaces, on the veth (the local API on the
# namespace's own loopback stays reachable):
#
#   nc1: DROP everything both ways for 12 s once its fetch has started
#   nc2: REJECT (TCP reset) both ways for 12 s once its fetch has started
#   nc3: 10 % of the packets dropped at random both ways, the whole rollout
#   nc4: 25 % of the packets dropped at random both ways, the whole rollout
#
# A signed rollout of tiny 1.0 (+ 512 KiB of data, fetched at 128 KiB/s so
# the cuts land mid-transfer) runs through it, then tiny 1.1 with nc1 and
# nc2 cut again (the other way round) while nc3 and nc4 keep losing packets.
# Asserts: both rollouts complete, 0 failed; every agent's own status runs
# the new version; the controller's store holds every telemetry record each
# agent numbered exactly once (seq 1..last, no gap, no duplicate); each
# agent's local API answers a completion; after a clean stop `flotilla-agent
# check` finds 0 problems. SKIP (77) where namespaces or iptables are refused.
#
#   chaos_netns.sh FLOTILLA CONTROLLER AGENT MKMODEL
set -uo pipefail
if [ $# -ne 4 ]; then
  echo "usage: chaos_netns.sh FLOTILLA CONTROLLER AGENT MKMODEL" >&2
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
chaos_netns_or_skip
t0=$SECONDS
IDS=(nc1 nc2 nc3 nc4)

chaos_init chaos_netns
for i in 1 2 3 4; do chaos_ns_add "$i"; done
chaos_pki "$CHAOS_NET.1.1" "$CHAOS_NET.2.1" "$CHAOS_NET.3.1" "$CHAOS_NET.4.1" -- "${IDS[@]}"
FL_BROKER_BIND=0.0.0.0 fleet_broker_start
fleet_trust tiny
fleet_controller_start
for i in 1 2 3 4; do
  chaos_agent_start "nc$i" "flchaos-$$-$i" "$CHAOS_NET.$i.1" "bandwidth = 131072"
done
check "four agents in their namespaces come online" fleet_wait_online 60 "${IDS[@]}"
check "the broker sees them from their namespace addresses" \
  bash -c "for i in 1 2 3 4; do grep -q 'from $CHAOS_NET.'\$i'.2:' '$FLEET_DIR/pki/broker/mosquitto.log' || exit 1; done"
check "nc1 cannot reach the root namespace's loopback (it is isolated)" \
  bash -c "! ip netns exec flchaos-$$-1 timeout 2 bash -c 'exec 3<>/dev/tcp/127.0.0.1/$FLEET_MQTT_PORT' 2>/dev/null"

models_ok() { # VERSION: every agent's own status runs it
  local id
  for id in "${IDS[@]}"; do [ "$(fleet_agent_version "$id" tiny)" = "$1" ] || return 1; done
}
any_model() { # every agent has some ready version current (or none yet: first install)
  local id v
  for id in "${IDS[@]}"; do
    v=$(fleet_agent_version "$id" tiny)
    case $v in ""|1.0|1.1) ;; *) return 1 ;; esac
  done
}
body='{"model":"tiny","version":"%s","waves":[100],"soak_s":0,"max_concurrent":10,"max_failure_rate":0.5,"min_sample":4}'

# cut_midway ID MODE SECONDS: once ID is fetching, cut its link for SECONDS.
cut_midway() {
  local id=$1 mode=$2 s=$3
  if chaos_wait 60 chaos_fetching "$id"; then
    chaos_cut "$id" "$mode" || { echo "FAIL: iptables $mode in $id"; return 1; }
    echo "$id: link cut ($mode) while $(chaos_install_state "$id")"
    sleep "$s"
    echo "$id: healed after $s s; $(chaos_drops "$id") packets dropped/rejected; install $(chaos_install_state "$id")"
    chaos_heal "$id"
  else
    echo "$id: never seen FETCHING (state $(chaos_install_state "$id"))"
    return 1
  fi
}

run_rollout() { # VERSION SEQ MODE1 MODE2
  local v=$1 seq=$2 m1=$3 m2=$4 r p1 p2 ok1 ok2
  chaos_bundle "$v" "$seq" 512 || fleet_die "bundle $v"
  chaos_loss nc3 0.10 && chaos_loss nc4 0.25 || { bad "iptables statistic rules"; return; }
  r=$(fleet_rollout_create "$(printf "$body" "$v")")
  check "rollout of $v created ($r)" [ -n "$r" ]
  cut_midway nc1 "$m1" 12 & p1=$!
  cut_midway nc2 "$m2" 12 & p2=$!
  wait $p1; ok1=$?; wait $p2; ok2=$?
  check "$v: nc1 cut ($m1) mid-transfer" [ $ok1 = 0 ]
  check "$v: nc2 cut ($m2) mid-transfer" [ $ok2 = 0 ]
  check "$v: during the cuts every agent keeps a working model" any_model
  check "$v: the rollout completes through cuts and loss (<= 150 s)" chaos_wait 150 rollout_done "$r"
  echo "rollout $v: $(fleet_rollout_state "$r") $(rollout_field "$r" '.counts | tojson') at $((SECONDS - t0)) s"
  check "$v: ... completed, none failed" \
    bash -c "[ '$(fleet_rollout_state "$r")' = completed ] && [ '$(rollout_field "$r" .counts.failed)' = 0 ]"
  check "$v: every agent's own status runs $v" chaos_wait 30 models_ok "$v"
  for i in nc3 nc4; do echo "$i: $(chaos_drops $i) packets dropped at random"; done
  check "$v: random loss did drop packets on nc3 and nc4" \
    bash -c "[ $(chaos_drops nc3) -gt 0 ] && [ $(chaos_drops nc4) -gt 0 ]"
  chaos_heal nc3; chaos_heal nc4
}

echo "--- 1.0: first install through DROP (nc1), REJECT (nc2), 10 % / 25 % loss"
run_rollout 1.0 1 drop reject
echo "--- 1.1: update through REJECT (nc1), DROP (nc2), 10 % / 25 % loss"
run_rollout 1.1 2 reject drop

echo "--- end state"
check "every agent's local API answers a completion with 1.1" chaos_wait 30 chaos_generate_all "${IDS[@]}"
for id in "${IDS[@]}"; do
  echo "$id: completion $(chaos_generate "$id"); events $(chaos_events "$id")"
  check "$id: telemetry reached the controller exactly once" chaos_tele_once "$id"
  check "$id: committed events for both installs stored" \
    [ "$(chaos_db "SELECT COUNT(*) FROM telemetry WHERE device='$id' AND kind='event:committed'")" -ge 2 ]
done
gaps=$(chaos_db "SELECT COALESCE(SUM(missing_seqs), 0) FROM gaps")
check "the controller's gap tracker: nothing missing (${gaps:-?})" [ "${gaps:-x}" = 0 ]
echo "records: inserted $(fleet_metric 'flotilla_telemetry_records_total{result="inserted"}'), duplicates refused $(fleet_metric 'flotilla_telemetry_records_total{result="duplicate"}')"
for id in "${IDS[@]}"; do
  check "$id: after a clean stop, flotilla-agent check finds 0 problems" chaos_agent_check "$id"
done
if [ "$fails" != 0 ]; then
  FLEET_FAILED=1
  for id in nc1 nc2; do echo "--- $id log (tail)"; tail -n 15 "$FLEET_DIR/$id/agent.log"; done
fi
echo "total $((SECONDS - t0)) s"
finish
