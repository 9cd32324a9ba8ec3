#!/usr/bin/env bash
# Staged rollouts with a real fleet: mosquitto (mutual TLS + ACL) on a free
# port, a real flotilla-controller (SQLite), and FL_ROLLOUT_AGENTS (10) real
# flotilla-agent processes of two hardware classes set with [hw]: x86_64
# gateways and aarch64 boxes. Started with packaging/demo/fleet-lib.sh.
#
#   rollout_fleet.sh FLOTILLA FLOTILLA_CONTROLLER FLOTILLA_AGENT MKMODEL FINETUNE
#
# 1. A good release goes to 100% wave by wave: the audit log (the
#    controller's SQLite) shows each wave's deploys before the next wave's,
#    the soak between waves, and every device commits it.
# 2. A release whose variant for the aarch64 class fails its acceptance test
#    halts within the first wave that reaches that class, and revert_on_halt
#    brings the gateways that took theirs back. (Per-class variants need
#    release.bundles in the create body; while the API refuses it, the
#    aarch64 variant alone is rolled out to that class; printed as PENDING.)
# 3. By hand: pause (nothing more is sent), resume, abort (nothing more is
#    sent, nothing reverted), rollback (the devices that took it go back);
#    actions in the wrong state are 409.
# 4. The controller is stopped (SIGTERM) mid-rollout and started again: the
#    rollout continues where it was, no device gets a second deploy.
set -uo pipefail
if [ $# -ne 5 ]; then
  echo "usage: rollout_fleet.sh FLOTILLA CONTROLLER AGENT MKMODEL FINETUNE" >&2
  exit 2
fi
FLOTILLA=$1 MKMODEL=$4 FINETUNE=$5
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
FLEET_FLOTILLA=$1 FLEET_CONTROLLER_BIN=$2 FLEET_AGENT_BIN=$3
. "$here/../../packaging/demo/fleet-lib.sh"
# A check the rest depends on: stop at once when it fails.
must() { check "$@" || { finish; exit 1; }; }
command -v sqlite3 >/dev/null || { echo "FAIL: sqlite3 not installed (apt-get install sqlite3)"; exit 1; }

N=${FL_ROLLOUT_AGENTS:-10}
NBOX=$(( N * 2 / 5 ))
GW=() BOX=()
for ((i = 1; i <= N - NBOX; i++)); do GW+=("gw-$i"); done
for ((i = 1; i <= NBOX; i++)); do BOX+=("box-$i"); done
ALL=("${GW[@]}" "${BOX[@]}")
M=tiny

fleet_init rollout_fleet
main_pid=$$
( trap 'kill "$s" 2>/dev/null; exit 0' TERM
  sleep "${FL_TEST_WATCHDOG_S:-280}" & s=$!
  wait "$s" && kill -TERM "$main_pid" ) >/dev/null 2>&1 &
FLEET_EXTRA_PIDS+=($!)
trap 'echo "FAIL: interrupted (signal, or the watchdog)"; fails=$((fails + 1)); FLEET_FAILED=1; exit 1' INT TERM
# The result decides whether the fleet's files are kept.
at_exit() { local rc=$?; [ "$fails" = 0 ] || FLEET_FAILED=1; (exit $rc); fleet_cleanup; }
trap at_exit EXIT

t0=$SECONDS
fleet_pki "${ALL[@]}"
fleet_broker_start
fleet_trust $M
fleet_controller_start
for d in "${GW[@]}"; do fleet_agent_start "$d" "role=gateway" x86_64 4096; done
for d in "${BOX[@]}"; do
  FLEET_AGENT_ACCEL=$([ "$d" = box-1 ] && echo npu0,dsp) fleet_agent_start "$d" "role=box" aarch64 1024
done
must "$N agents online at the controller (${#GW[@]} x86_64, ${#BOX[@]} aarch64)" \
  fleet_wait_online 90 "${ALL[@]}"
echo "fleet up in $((SECONDS - t0)) s: broker :$FLEET_MQTT_PORT, controller $FLEET_URL"
arch_of() { fleet_device "$1" | jq -r .device.arch; }
check "[hw] sets the class the controller registers (box-1 aarch64, gw-1 x86_64)" \
  [ "$(arch_of box-1)/$(arch_of gw-1)/$(fleet_device box-1 | jq -r .device.ram_mb)" = "aarch64/x86_64/1024" ]
check "[hw] accelerators reported (box-1: npu0,dsp; box-2: none)" \
  [ "$(fleet_device box-1 | jq -c .device.accelerators)/$(fleet_device box-2 | jq -c .device.accelerators)" = '["npu0","dsp"]/[]' ]

W=$FLEET_DIR/work
mkdir -p "$W"
# [hw] values that are not valid: a clear error, the agent does not start.
hw_refused() { # SETTING MESSAGE
  printf '[agent]\nstate_dir = %s/hwbad\n[hw]\n%s\n' "$W" "$1" >"$W/hwbad.conf"
  local out
  out=$("$FLEET_AGENT_BIN" -c "$W/hwbad.conf" status 2>&1) && return 1
  grep -q "$2" <<<"$out" || { echo "  got: $out"; return 1; }
}
check "[hw] arch = 'arm 64' refused: not a valid name" hw_refused "arch = arm 64" "hw.arch 'arm 64' is not a valid name"
check "[hw] ram_mb = 0 refused" hw_refused "ram_mb = 0" "hw.ram_mb must be a number of MiB"
check "[hw] ram_mb = lots refused" hw_refused "ram_mb = lots" "hw.ram_mb must be a number of MiB"
check "[hw] accelerators = 'npu0,/dev/x' refused" hw_refused "accelerators = npu0,/dev/x" "hw.accelerators must be names"
check "[hw] backends is not a setting" hw_refused "backends = onnx" "unknown setting 'hw.backends'"
check "none of them created a state directory" [ ! -e "$W/hwbad" ]
# bundle VERSION SEQ FILE [EXTRA]: signed, for both classes, one acceptance
# test (EXTRA: more members of it), pushed.
bundle() {
  cat >"$W/t-$1.json" <<JSON
{"name":"$M","version":"0","sequence":0,"created":"2026-01-01T00:00:00Z",
 "expires":"2027-01-01T00:00:00Z",
 "compatibility":{"arch":["x86_64","aarch64"],"accelerator":"none","backend":"gguf"},
 "acceptance":[{"name":"smoke","prompt":"Status:","max_tokens":2${4:+,$4}}]}
JSON
  "$FLOTILLA" bundle create -o "$W/$1.tar" --key "$FLEET_DIR/keys/release.pem" \
    --template "$W/t-$1.json" --name $M --version "$1" --sequence "$2" "$3" >/dev/null &&
  "$FLOTILLA" push "$W/$1.tar" --token "$FLEET_OT" >/dev/null
}
"$MKMODEL" --arch llama --vocab tiny --dim 64 --layers 2 --heads 4 --kv-heads 2 \
  --ffn 128 --ctx 256 --type q8_0 --seed 1 -o "$W/m1.gguf" >/dev/null
for i in 2 3 4 5; do
  "$FINETUNE" "$W/m1.gguf" "$W/m$i.gguf" --layers 1 --seed "$i" >/dev/null
done
mk_bundles() {
  bundle 1.0 1 "$W/m1.gguf" && bundle 2.0-x86 2 "$W/m2.gguf" &&
  bundle 2.0-arm 3 "$W/m5.gguf" '"memory_budget_mb":4' &&
  bundle 3.0 4 "$W/m3.gguf" && bundle 4.0 5 "$W/m4.gguf"
}
# (each bundle has its own sequence: the controller refuses a second bundle
# of the model with a sequence already taken)
must "bundles 1.0, 2.0-x86, 2.0-arm (fails acceptance), 3.0, 4.0 signed and pushed" mk_bundles

# ---------------------------------------------------------------- helpers
DB=$FLEET_DIR/controller-data/controller.db
# audit ID: "action|reason" lines of rollout ID, oldest first
audit() {
  sqlite3 -readonly "$DB" "SELECT action || '|' || ts || '|' || reason FROM audit
    WHERE reason LIKE 'rollout $1: %' ORDER BY id" 2>/dev/null
}
deploys() { audit "$1" | grep -c '^rollout\.deploy|'; }
state_of() { fleet_rollout_state "$1"; }
is_state() { [ "$(state_of "$1")" = "$2" ]; }
doc() { fleet_rollout "$1" | jq -r "$2"; }
count_on() { # VERSION: devices on it (controller's view)
  local d n=0
  for d in "${ALL[@]}"; do [ "$(fleet_version "$d" $M)" = "$1" ] && n=$((n + 1)); done
  echo $n
}
all_on() { [ "$(count_on "$1")" = "$N" ]; }
agents_on() { # VERSION: every agent's own status agrees
  local d
  for d in "${ALL[@]}"; do [ "$(fleet_agent_version "$d" $M)" = "$1" ] || return 1; done
}
create() { # BODY: sets RID
  RID=$(fleet_rollout_create "$1") && [ -n "$RID" ]
}
action() { # ID ACTION: HTTP status
  curl -s -o "$W/action.json" -w '%{http_code}' -X POST -H "Authorization: Bearer $FLEET_OT" \
    "$FLEET_URL/api/v1/rollouts/$1/$2"
}

# ---------------------------------------------------------------- 1
echo "--- 1: a good release goes to 100% wave by wave"
t1=$SECONDS
must "rollout of 1.0 created (waves 20,50,100 %, soak 2 s)" create \
  '{"model":"tiny","version":"1.0","waves":[20,50,100],"soak_s":2,"max_concurrent":20,
    "max_failure_rate":0.2,"min_sample":2}'
R1=$RID
must "rollout $R1 completes (<= 120 s)" fleet_wait 120 is_state "$R1" completed
echo "rollout $R1: $(doc "$R1" .reason) in $((SECONDS - t1)) s"
check "the controller sees all $N devices on 1.0" fleet_wait 10 all_on 1.0
check "every agent's own status says 1.0" agents_on 1.0
audit "$R1" >"$W/audit1.txt"
w1=$(( (N * 20 + 99) / 100 )) w2=$(( (N * 50 + 99) / 100 ))
# Deploys before the first and second advance.
d_before() { awk -F'|' -v k="$1" '$1 == "rollout.advance" {a++} a < k && $1 == "rollout.deploy" {n++} END {print n + 0}' "$W/audit1.txt"; }
check "wave 1 sent exactly $w1 deploys before wave 2 started ($(d_before 1))" [ "$(d_before 1)" = "$w1" ]
check "waves 1-2 sent exactly $w2 before wave 3 started ($(d_before 2))" [ "$(d_before 2)" = "$w2" ]
check "one deploy per device in total ($(deploys "$R1"))" [ "$(deploys "$R1")" = "$N" ]
check "each device got exactly one deploy" [ "$(grep '^rollout\.deploy|' "$W/audit1.txt" | sed 's/.* sent to //' | sort -u | wc -l)" = "$N" ]
order=$(awk -F'|' '$1 != "rollout.deploy" {print $1}' "$W/audit1.txt" | tr '\n' ' ')
check "audit order: create, wave_done, advance, wave_done, advance, wave_done, complete ($order)" \
  [ "$order" = "rollout.create rollout.wave_done rollout.advance rollout.wave_done rollout.advance rollout.wave_done rollout.complete " ]
soak_ok() { # every advance at least soak_s after the wave_done before it
  awk -F'|' '$1 == "rollout.wave_done" {t = $2} $1 == "rollout.advance" && $2 - t < 2 {bad = 1} END {exit bad}' "$W/audit1.txt"
}
check "each wave soaked 2 s before the next" soak_ok
check "waves were done in order (1 of 3, 2 of 3, 3 of 3)" \
  [ "$(grep -o 'wave [0-9] of 3 done' "$W/audit1.txt" | cut -c6 | tr -d '\n')" = 123 ]

# ---------------------------------------------------------------- 2
echo "--- 2: the aarch64 variant fails acceptance: halt in the first wave that reaches it, revert"
t2=$SECONDS
# Release 2.0: a variant per class (POST /api/v1/releases); its rollout
# gives each device the variant of its arch.
perclass=1
rel=$(curl -s -m 10 -w '\n%{http_code}' -H "Authorization: Bearer $FLEET_OT" --data-binary \
  '{"model":"tiny","version":"2.0","variants":[{"bundle":"2.0-x86","select":{"arch":"x86_64"}},
    {"bundle":"2.0-arm","select":{"arch":"aarch64"}}]}' "$FLEET_URL/api/v1/releases")
if [ "${rel##*$'\n'}" = 201 ]; then
  ok "release tiny@2.0 created: 2.0-x86 for x86_64, 2.0-arm for aarch64"
  must "rollout of release 2.0 created (waves 50,100 %, revert_on_halt)" create \
    '{"model":"tiny","release":"2.0","waves":[50,100],"soak_s":1,"max_concurrent":20,
      "max_failure_rate":0.3,"min_sample":1,"revert_on_halt":true}'
else
  perclass=0
  echo "PENDING (controller): per-class releases: POST /api/v1/releases answered ${rel##*$'\n'}: ${rel%$'\n'*}"
fi
if [ $perclass = 1 ]; then
  R2=$RID
  must "rollout $R2 halts (<= 90 s)" fleet_wait 90 is_state "$R2" halted
  hw=$(doc "$R2" .wave)
  audit "$R2" >"$W/audit2.txt"
  # The wave of each deploy: count the advances before it.
  awk -F'|' '$1 == "rollout.advance" {w++} $1 == "rollout.deploy" {sub(/.* sent to /, "", $3); print w + 0, $3}' \
    "$W/audit2.txt" >"$W/deploy-waves.txt"
  first_box=$(grep -m1 ' box-' "$W/deploy-waves.txt" | cut -d' ' -f1)
  check "it halted in wave $((hw + 1)), the first that reached an aarch64 box (wave $(( ${first_box:-98} + 1 )))" \
    [ "$hw" = "${first_box:-x}" ]
  check "nothing was sent after the wave that halted" \
    bash -c "! awk '\$1 > $hw' '$W/deploy-waves.txt' | grep -q ."
  check "the halt is audited with its reason" grep -q '^rollout\.halt|.*failure gate crossed' "$W/audit2.txt"
  check "only gateways got 2.0-x86, only boxes 2.0-arm" bash -c "! grep -E 'tiny@2.0-x86 sent to box-|tiny@2.0-arm sent to gw-' '$W/audit2.txt'"
  took=$(grep ' gw-' "$W/deploy-waves.txt" | cut -d' ' -f2)
  gone_back() { # the gateways that took 2.0-x86 were sent a revert each
    audit "$R2" >"$W/audit2.txt"
    [ "$(grep -c '^rollout\.revert|' "$W/audit2.txt")" = "$(wc -w <<<"$took")" ]
  }
  if [ -n "$took" ]; then
    check "reverts were sent to the gateways that took 2.0-x86 ($(echo $took))" fleet_wait 30 gone_back
  else
    echo "(no gateway was in the waves before the first box: nothing to revert)"
  fi
else
  # The aarch64 variant on its own, to that class.
  must "rollout of 2.0-arm to the aarch64 class created (waves 25,50,100)" create \
    '{"model":"tiny","version":"2.0-arm","waves":[25,50,100],"soak_s":1,"max_concurrent":20,
      "max_failure_rate":0.3,"min_sample":1,"revert_on_halt":true,"select":{"arch":"aarch64"}}'
  R2=$RID
  must "rollout $R2 halts (<= 90 s)" fleet_wait 90 is_state "$R2" halted
  audit "$R2" >"$W/audit2.txt"
  check "it halted in wave 1: $(( (NBOX * 25 + 99) / 100 )) deploy(s), no advance" \
    [ "$(doc "$R2" .wave)/$(deploys "$R2")/$(grep -c '^rollout\.advance|' "$W/audit2.txt")" = "0/$(( (NBOX * 25 + 99) / 100 ))/0" ]
  check "the halt is audited with its reason" grep -q '^rollout\.halt|.*failure gate crossed' "$W/audit2.txt"
  check "only aarch64 boxes were sent it" bash -c "! grep '^rollout\.deploy|' '$W/audit2.txt' | grep -qv 'sent to box-'"
fi
rejected() { fleet_device "$1" | jq -e '.models[] | select(.install.version == "2.0-arm") | .install.state == "REJECTED"' >/dev/null; }
first=$(grep '^rollout\.deploy|.*sent to box-' "$W/audit2.txt" | head -1 | sed 's/.* sent to //')
check "the box that got 2.0-arm rejected it (${first:-none})" rejected "${first:-none}"
check "every device is back on / stayed on 1.0" fleet_wait 60 all_on 1.0
check "every agent's own status says 1.0" fleet_wait 10 agents_on 1.0
echo "part 2 in $((SECONDS - t2)) s"

# ---------------------------------------------------------------- 3
echo "--- 3: pause, resume, abort, rollback by hand"
t3=$SECONDS
must "rollout of 3.0 created (waves 10,50,100 %, soak 3 s)" create \
  '{"model":"tiny","version":"3.0","waves":[10,50,100],"soak_s":3,"max_concurrent":20,
    "max_failure_rate":0.5,"min_sample":3}'
R3=$RID
wave_done() { [ "$(doc "$R3" .wave_done_at)" != null ]; }
must "wave 1 done" fleet_wait 60 wave_done
check "pause -> 200" [ "$(action "$R3" pause)" = 200 ]
check "the rollout is paused" is_state "$R3" paused
n_paused=$(deploys "$R3")
sleep 4   # longer than the soak: a running rollout would have moved on
check "paused: no more deploys, still wave 1 ($n_paused deploys)" \
  [ "$(deploys "$R3")/$(doc "$R3" .wave)" = "$n_paused/0" ]
check "pause a paused rollout -> 409" [ "$(action "$R3" pause)" = 409 ]
check "resume -> 200" [ "$(action "$R3" resume)" = 200 ]
more() { [ "$(deploys "$R3")" -gt "$n_paused" ]; }
check "resumed: wave 2 sends deploys again" fleet_wait 30 more
check "abort -> 200" [ "$(action "$R3" abort)" = 200 ]
n_abort=$(deploys "$R3")
sleep 3
check "aborted: nothing more sent ($n_abort deploys), state aborted" \
  [ "$(deploys "$R3")/$(state_of "$R3")" = "$n_abort/aborted" ]
check "resume an aborted rollout -> 409" [ "$(action "$R3" resume)" = 409 ]
took3() { # the devices rollout 3 sent a deploy to have installed it
  local d
  for d in $(audit "$R3" | grep '^rollout\.deploy|' | sed 's/.* sent to //'); do
    [ "$(fleet_version "$d" $M)" = 3.0 ] || return 1
  done
}
check "abort reverted nothing: the $n_abort devices that were sent 3.0 run it" fleet_wait 30 took3
on3=$(count_on 3.0)
check "rollback -> 200" [ "$(action "$R3" rollback)" = 200 ]
check "rolled back: every device runs 1.0 again" fleet_wait 60 all_on 1.0
check "every agent's own status says 1.0" fleet_wait 10 agents_on 1.0
check "one revert per device that had taken 3.0 ($on3)" [ "$(audit "$R3" | grep -c '^rollout\.revert|')" = "$on3" ]
check "rollback of a rolled-back rollout -> 409" [ "$(action "$R3" rollback)" = 409 ]
check "the actions are audited with the operator's token name" \
  [ "$(sqlite3 -readonly "$DB" "SELECT count(*) FROM audit WHERE action = 'rollout.action' AND actor = 'operator' AND reason LIKE 'rollout $R3: %'")" = 4 ]
echo "part 3 in $((SECONDS - t3)) s"

# ---------------------------------------------------------------- 4
echo "--- 4: the controller restarts mid-rollout"
t4=$SECONDS
must "rollout of 4.0 created (waves 20,60,100 %, soak 4 s)" create \
  '{"model":"tiny","version":"4.0","waves":[20,60,100],"soak_s":4,"max_concurrent":20,
    "max_failure_rate":0.2,"min_sample":2}'
R4=$RID
wave_done4() { [ "$(doc "$R4" .wave_done_at)" != null ]; }
must "wave 1 done" fleet_wait 60 wave_done4
before=$(deploys "$R4")
check "SIGTERM stops the controller cleanly" fleet_controller_stop
sleep 1
FLEET_CTL_PORT=0 fleet_controller_start
check "the controller is back (MQTT connected, $FLEET_URL)" fleet_mqtt_connected
check "after the restart rollout $R4 is still running in wave 1 or 2" \
  bash -c "[ '$(state_of "$R4")' = running ] || [ '$(state_of "$R4")' = completed ]"
check "rollout $R4 completes after the restart (<= 120 s)" fleet_wait 120 is_state "$R4" completed
check "every device runs 4.0" fleet_wait 10 all_on 4.0
check "every agent's own status says 4.0" agents_on 4.0
audit "$R4" >"$W/audit4.txt"
check "one deploy per device across the restart ($(deploys "$R4"); $before before it)" \
  [ "$(grep '^rollout\.deploy|' "$W/audit4.txt" | sed 's/.* sent to //' | sort | uniq -d | wc -l)/$(deploys "$R4")" = "0/$N" ]
check "the waves went on in order after the restart" \
  [ "$(grep -o 'wave [0-9] of 3 done' "$W/audit4.txt" | cut -c6 | tr -d '\n')" = 123 ]
echo "part 4 in $((SECONDS - t4)) s; total $((SECONDS - t0)) s"
fleet_cleanup_logs() { grep -l -E 'Sanitizer|runtime error:' "$FLEET_DIR"/controller.log "$FLEET_DIR"/*/agent.log 2>/dev/null; }
check "no sanitizer report in the controller's or agents' logs ($(fleet_cleanup_logs | tr '\n' ' '))" \
  [ -z "$(fleet_cleanup_logs)" ]
if [ "$fails" != 0 ]; then
  echo "--- controller log (tail)"; tail -n 20 "$FLEET_DIR/controller.log"
  for d in gw-1 box-1; do echo "--- $d log (tail)"; tail -n 10 "$FLEET_DIR/$d/agent.log"; done
fi
finish
