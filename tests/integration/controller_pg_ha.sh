#!/usr/bin/env bash
# Two controller instances on one PostgreSQL database (docs/controller.md
# "Store: PostgreSQL", "Several instances"): a real PostgreSQL cluster
# (tests/pg/start.sh) on a free 127.0.0.1 port, mosquitto with mutual TLS +
# ACL (the 2nd instance's certificate is flotilla-controller-2), two
# flotilla-controller processes behind the $share subscriptions, and
# FL_HA_AGENTS (6) real agents sending telemetry every second.
#
#   controller_pg_ha.sh FLOTILLA FLOTILLA_CONTROLLER FLOTILLA_AGENT MKMODEL
#
# 1. Both instances answer the HTTP API with the same view.
# 2. A staged rollout (waves 20/50/100 %, soak) is started; the instance that
#    runs the rollout engine is killed with SIGKILL after the first wave; the
#    other takes the engine over and carries the rollout to 100 %: every
#    device on the new version, state completed, the audit log in order
#    with each wave decided once and one deploy per device, counts exact.
# 3. Telemetry batches of one device reach either instance: every record
#    is stored exactly once, without holes, and no instance reports a gap.
# 4. PostgreSQL is stopped and started again under a running controller:
#    it reconnects by itself (logged, with backoff, no busy loop), the API
#    works again and a new rollout goes through.
set -uo pipefail
if [ $# -ne 4 ]; then
  echo "usage: controller_pg_ha.sh FLOTILLA CONTROLLER AGENT MKMODEL" >&2
  exit 2
fi
FLOTILLA=$1 MKMODEL=$4
here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../.." && pwd)
. "$here/lib.sh"
FLEET_FLOTILLA=$1 FLEET_CONTROLLER_BIN=$2 FLEET_AGENT_BIN=$3
. "$src/packaging/demo/fleet-lib.sh"
must() { check "$@" || { finish; exit 1; }; }
command -v psql >/dev/null || { echo "FAIL: psql not installed (Debian package postgresql-client)"; exit 1; }

N=${FL_HA_AGENTS:-6}
ALL=()
for ((i = 1; i <= N; i++)); do ALL+=("dev-$i"); done
M=tiny

fleet_init controller_pg_ha
PGDIR=$FLEET_DIR/pg
declare -A CPID=() CURL=()
main_pid=$$
( trap 'kill "$s" 2>/dev/null; exit 0' TERM
  sleep "${FL_TEST_WATCHDOG_S:-280}" & s=$!
  wait "$s" && kill -TERM "$main_pid" ) >/dev/null 2>&1 &
FLEET_EXTRA_PIDS+=($!)
trap 'echo "FAIL: interrupted (signal, or the watchdog)"; fails=$((fails + 1)); FLEET_FAILED=1; exit 1' INT TERM
at_exit() {
  local rc=$? k
  [ "$fails" = 0 ] || FLEET_FAILED=1
  for k in "${!CPID[@]}"; do
    kill -TERM "${CPID[$k]}" 2>/dev/null
    timeout 10 tail --pid="${CPID[$k]}" -f /dev/null || kill -KILL "${CPID[$k]}" 2>/dev/null
  done
  [ -d "$PGDIR" ] && "$src/tests/pg/stop.sh" "$PGDIR" >/dev/null 2>&1
  (exit $rc)
  fleet_cleanup
}
trap at_exit EXIT

t0=$SECONDS
must "PostgreSQL started on 127.0.0.1" "$src/tests/pg/start.sh" "$PGDIR"
DSN=$(cat "$PGDIR/dsn")
PGBIN=$(dirname "$(ls /usr/lib/postgresql/*/bin/pg_ctl | head -1)")
PGREAL=$(readlink -f "$PGDIR")
psql_q() { psql "$DSN" -XAtq -v ON_ERROR_STOP=1 -c "$1" 2>/dev/null; }
pg_as() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

fleet_pki "${ALL[@]}"
"$FLOTILLA" pki issue-controller flotilla-controller-2 --out controller-2 \
  --dir "$FLEET_DIR/pki" >/dev/null || fleet_die "controller-2 certificate"
fleet_broker_start
must "the broker's ACL lists flotilla-controller-2" \
  grep -qx 'user flotilla-controller-2' "$FLEET_DIR/pki/broker/acl"
fleet_trust $M

# ctl_start K: instance K (1 or 2) on the shared database and data_dir (the
# chunk store must be shared: either instance answers a chunk request).
ctl_start() {
  local k=$1 d=$FLEET_DIR cert=controller
  [ "$1" = 2 ] && cert=controller-2
  cat >"$d/ctl-$k.conf" <<CONF
[controller]
data_dir = $d/controller-data
listen = 127.0.0.1
port = 0
trust_dir = $d/trust
store = postgresql
store_dsn = $DSN
read_tokens = dashboard:$FLEET_RT
operator_tokens = operator:$FLEET_OT
ingest_flush_ms = 50

[mqtt]
uri = ssl://127.0.0.1:$FLEET_MQTT_PORT
ca = $d/pki/ca.crt
cert = $d/pki/$cert.crt
key = $d/pki/$cert.key
CONF
  rm -f "$d/ctl-$k.port"
  "$FLEET_CONTROLLER_BIN" --config "$d/ctl-$k.conf" --port-file "$d/ctl-$k.port" \
    >>"$d/ctl-$k.log" 2>&1 &
  CPID[$k]=$!
  fleet_wait 20 test -s "$d/ctl-$k.port" || { tail -n 20 "$d/ctl-$k.log" >&2; return 1; }
  CURL[$k]=http://127.0.0.1:$(cat "$d/ctl-$k.port")
  fleet_wait 20 ctl_connected "$k" || { tail -n 20 "$d/ctl-$k.log" >&2; return 1; }
}
ctl_metric() { # K NAME
  curl -s -m 5 -H "Authorization: Bearer $FLEET_RT" "${CURL[$1]}/metrics" |
    awk -v k="$2" '$1 == k {print $2}'
}
ctl_connected() { [ "$(ctl_metric "$1" flotilla_mqtt_connected)" = 1 ]; }
ctl_get() { curl -s -m 10 -H "Authorization: Bearer $FLEET_RT" "${CURL[$1]}$2"; }
must "controller 1 started (PostgreSQL store, MQTT as flotilla-controller)" ctl_start 1
must "controller 2 started (same database, MQTT as flotilla-controller-2)" ctl_start 2
FLEET_URL=${CURL[1]}
export FLOTILLA_CONTROLLER=$FLEET_URL

# Agents: telemetry every second, so that batches go to both instances.
agent_start() { # ID
  local id=$1 d=$FLEET_DIR/$1
  mkdir -p "$d/trust"
  cp "$FLEET_DIR/trust/"* "$d/trust/"
  cat >"$d/agent.conf" <<CONF
[agent]
id = $id
state_dir = $d/state
trust_dir = $d/trust
labels = role=gateway

[mqtt]
uri = ssl://127.0.0.1:$FLEET_MQTT_PORT
ca = $FLEET_DIR/pki/ca.crt
cert = $FLEET_DIR/pki/devices/$id.crt
key = $FLEET_DIR/pki/devices/$id.key

[hw]
arch = x86_64
ram_mb = 2048

[telemetry]
interval = 1
resend_after = 5
CONF
  "$FLEET_AGENT_BIN" -c "$d/agent.conf" run >>"$d/agent.log" 2>&1 &
  FLEET_AGENT_PID[$id]=$!
}
for d in "${ALL[@]}"; do agent_start "$d"; done
must "$N agents online at the controller" fleet_wait_online 90 "${ALL[@]}"
echo "fleet up in $((SECONDS - t0)) s: broker :$FLEET_MQTT_PORT, ${CURL[1]} and ${CURL[2]}"

W=$FLEET_DIR/work
mkdir -p "$W"
for v in 1 2 3; do mk_model "$W/m$v.gguf" "$v"; done
bundle() { # VERSION SEQ FILE
  cat >"$W/t-$1.json" <<JSON
{"name":"$M","version":"0","sequence":0,"created":"2026-01-01T00:00:00Z",
 "expires":"2027-01-01T00:00:00Z",
 "compatibility":{"arch":["x86_64"],"accelerator":"none","backend":"gguf"}}
JSON
  "$FLOTILLA" bundle create -o "$W/$1.tar" --key "$FLEET_DIR/keys/release.pem" \
    --template "$W/t-$1.json" --name $M --version "$1" --sequence "$2" "$3" >/dev/null &&
  "$FLOTILLA" push "$W/$1.tar" --token "$FLEET_OT" >/dev/null
}
mk_bundles() { bundle 1.0 1 "$W/m1.gguf" && bundle 2.0 2 "$W/m2.gguf" && bundle 3.0 3 "$W/m3.gguf"; }
must "bundles 1.0, 2.0, 3.0 signed and pushed (through instance 1)" mk_bundles

# ---------------------------------------------------------------- helpers
audit() { # ID: "action|ts|reason" of rollout ID, oldest first
  psql_q "SELECT action || '|' || ts || '|' || reason FROM audit
          WHERE reason LIKE 'rollout $1: %' ORDER BY id"
}
create() { # K BODY: sets RID
  local out code
  out=$(curl -s -m 10 -w '\n%{http_code}' -H "Authorization: Bearer $FLEET_OT" \
        --data-binary "$2" "${CURL[$1]}/api/v1/rollouts")
  code=${out##*$'\n'}; out=${out%$'\n'*}
  [ "$code" = 201 ] || { echo "  rollout create: HTTP $code: $out"; return 1; }
  RID=$(jq -r .id <<<"$out")
}
doc() { ctl_get "$1" "/api/v1/rollouts/$2" | jq -r "$3"; }
is_state() { [ "$(doc "$1" "$2" .state)" = "$3" ]; }
version_on() { ctl_get "$1" "/api/v1/devices/$2" | jq -r --arg m $M '.models[]? | select(.model == $m) | .version'; }
all_on() { # K VERSION
  local d
  for d in "${ALL[@]}"; do [ "$(version_on "$1" "$d")" = "$2" ] || return 1; done
}
agents_on() { # VERSION
  local d
  for d in "${ALL[@]}"; do [ "$(fleet_agent_version "$d" $M)" = "$1" ] || return 1; done
}
# The same view from both instances (rollouts, devices, bundles, releases).
view() { # K
  local p
  for p in /api/v1/rollouts /api/v1/devices /api/v1/bundles /api/v1/releases; do
    ctl_get "$1" "$p" | jq -S 'del(.. | .last_seen?)'
  done
}
same_view() { view 1 >"$W/view1.json"; view 2 >"$W/view2.json"; cmp -s "$W/view1.json" "$W/view2.json" &&
  [ "$(jq -s '.[1].devices | length' "$W/view1.json")" = "$N" ]; }
leader_of() { # which instance logged that it runs the engine last
  local k best=0 bl=0 l
  for k in 1 2; do
    l=$(grep -n 'now runs the rollout engine' "$FLEET_DIR/ctl-$k.log" | tail -1 | cut -d: -f1)
    [ -n "$l" ] && [ -n "${CPID[$k]:-}" ] && kill -0 "${CPID[$k]}" 2>/dev/null && { best=$k; bl=$l; }
  done
  [ "$bl" -gt 0 ] && echo "$best"
}

# ---------------------------------------------------------------- 1
echo "--- 1: both instances, one view"
check "the same devices, bundles, releases and rollouts from both instances" fleet_wait 20 same_view
both_ingest() { # each instance took telemetry batches through $share
  local a b
  a=$(ctl_metric 1 'flotilla_telemetry_batches_total{result="ok"}')
  b=$(ctl_metric 2 'flotilla_telemetry_batches_total{result="ok"}')
  [ "${a:-0}" -gt 0 ] && [ "${b:-0}" -gt 0 ]
}
check "telemetry batches reach both instances (\$share)" fleet_wait 30 both_ingest

# ---------------------------------------------------------------- 2
echo "--- 2: kill -9 the engine's instance mid-rollout"
t2=$SECONDS
must "rollout of 1.0 created through instance 2 (waves 20,50,100 %, soak 6 s)" create 2 \
  '{"model":"tiny","version":"1.0","waves":[20,50,100],"soak_s":6,"max_concurrent":20,
    "max_failure_rate":0.2,"min_sample":2}'
R1=$RID
has_leader() { leader_of >/dev/null; }
must "an instance runs the rollout engine" fleet_wait 10 has_leader
L=$(leader_of) S=$((3 - L))
echo "instance $L runs the engine, instance $S follows"
wave_done() { [ "$(doc "$S" "$R1" .wave_done_at)" != null ]; }
must "wave 1 done, seen from the follower" fleet_wait 60 wave_done
check "mid-rollout both instances show the same rollout and devices" fleet_wait 10 same_view
before=$(audit "$R1" | grep -c '^rollout\.deploy|')
kill -KILL "${CPID[$L]}"
wait "${CPID[$L]}" 2>/dev/null
unset "CPID[$L]"
w_kill=$(doc "$S" "$R1" .wave)
echo "killed instance $L (SIGKILL) after $before deploys, in wave $((w_kill + 1)) of 3"
check "the kill came mid-rollout (wave $((w_kill + 1)) of 3, $before of $N deploys sent)" \
  [ "$w_kill" -lt 2 -a "$before" -lt "$N" ]
takeover() { grep -q 'now runs the rollout engine' "$FLEET_DIR/ctl-$S.log"; }
check "instance $S takes over the rollout engine" fleet_wait 30 takeover
check "rollout $R1 completes on instance $S (<= 120 s)" fleet_wait 120 is_state "$S" "$R1" completed
echo "rollout $R1: $(doc "$S" "$R1" .reason) in $((SECONDS - t2)) s"
check "instance $S sees every device on 1.0" fleet_wait 20 all_on "$S" 1.0
check "every agent's own status says 1.0" fleet_wait 20 agents_on 1.0
audit "$R1" >"$W/audit1.txt"
order=$(awk -F'|' '$1 != "rollout.deploy" && $1 != "rollout.redeploy" {print $1}' "$W/audit1.txt" | tr '\n' ' ')
check "audit log continuous: create, wave_done, advance, wave_done, advance, wave_done, complete ($order)" \
  [ "$order" = "rollout.create rollout.wave_done rollout.advance rollout.wave_done rollout.advance rollout.wave_done rollout.complete " ]
check "each wave decided once (wave 1, 2, 3 done once each)" \
  [ "$(grep -o 'wave [0-9] of 3 done' "$W/audit1.txt" | cut -c6 | tr -d '\n')" = 123 ]
check "one deploy per device across the kill ($(grep -c '^rollout\.deploy|' "$W/audit1.txt") deploys, $before before)" \
  [ "$(grep '^rollout\.deploy|' "$W/audit1.txt" | sed 's/.* sent to //' | sort | uniq -d | wc -l)/$(grep '^rollout\.deploy|' "$W/audit1.txt" | sed 's/.* sent to //' | sort -u | wc -l)" = "0/$N" ]
check "rollout_devices: one row per device" [ "$(psql_q "SELECT count(*), count(DISTINCT device) FROM rollout_devices WHERE rollout = $R1")" = "$N|$N" ]
counts=$(doc "$S" "$R1" '.counts | "\(.targets)/\(.attempted)/\(.succeeded)/\(.failed)/\(.in_progress)"')
check "counts exact: targets/attempted/succeeded/failed/in_progress = $N/$N/$N/0/0 ($counts)" \
  [ "$counts" = "$N/$N/$N/0/0" ]
soak_ok() { awk -F'|' '$1 == "rollout.wave_done" {t = $2} $1 == "rollout.advance" && $2 - t < 6 {bad = 1} END {exit bad}' "$W/audit1.txt"; }
check "each wave soaked 6 s before the next, across the takeover" soak_ok
echo "deploys sent again after the takeover (rollout.redeploy): $(grep -c '^rollout\.redeploy|' "$W/audit1.txt")"
must "the killed instance $L starts again" ctl_start "$L"
check "after the restart both instances show the same view" fleet_wait 20 same_view
echo "part 2 in $((SECONDS - t2)) s"

# ---------------------------------------------------------------- 3
echo "--- 3: telemetry through both instances, exactly once, no false gaps"
# Let a few more periods go through both instances, then compare with the
# agents' own outboxes: every seq from 1 to the highest stored once.
sleep 3
no_holes() {
  local bad
  bad=$(psql_q "SELECT device FROM (SELECT device, stream, count(*) AS n, count(DISTINCT seq) AS u,
          min(seq) AS lo, max(seq) AS hi FROM telemetry GROUP BY device, stream) x
          WHERE n <> u OR lo <> 1 OR hi - lo + 1 <> n")
  [ -z "$bad" ] || { echo "  holes or duplicates: $bad"; return 1; }
}
check "every device's records are stored once each, seq 1..highest without holes" fleet_wait 15 no_holes
check "each device's records are in the store ($(psql_q "SELECT count(DISTINCT device) FROM telemetry") devices)" \
  [ "$(psql_q "SELECT count(DISTINCT device) FROM telemetry")" = "$N" ]
gaps0() {
  [ "$(ctl_metric 1 flotilla_telemetry_missing_seqs)" = 0 ] &&
  [ "$(ctl_metric 2 flotilla_telemetry_missing_seqs)" = 0 ] &&
  [ "$(psql_q "SELECT COALESCE(sum(missing_seqs), 0) FROM gaps")" = 0 ]
}
check "no gap reported (metric 0 on both instances, gaps rows 0)" fleet_wait 15 gaps0
psql_q "SELECT device, missing_ranges, missing_seqs, highest FROM gaps ORDER BY device" >"$W/gaps.txt"
dup=$(( $(ctl_metric 1 'flotilla_telemetry_records_total{result="duplicate"}') + $(ctl_metric 2 'flotilla_telemetry_records_total{result="duplicate"}') ))
echo "gaps rows: $(tr '\n' ' ' <"$W/gaps.txt"); duplicates refused: $dup"

# ---------------------------------------------------------------- 4
echo "--- 4: PostgreSQL restarts under the controllers"
t4=$SECONDS
cpu_of() { awk '{print $14 + $15}' "/proc/$1/stat"; }
c1=$(cpu_of "${CPID[1]}")
must "PostgreSQL stopped" pg_as "$PGBIN/pg_ctl" -D "$PGREAL/data" -m fast -w -t 30 stop
sleep 4
ticks=$(( $(cpu_of "${CPID[1]}") - c1 ))
check "both controllers still run while the database is down" kill -0 "${CPID[1]}" "${CPID[2]}"
check "no busy loop while it is down (instance 1 used $ticks ticks of CPU in 4 s)" [ "$ticks" -lt 150 ]
check "the API answers 5xx (not a hang) while the database is down" \
  bash -c "c=\$(curl -s -m 10 -o /dev/null -w '%{http_code}' -H 'Authorization: Bearer $FLEET_RT' '${CURL[1]}/api/v1/rollouts'); [ \"\${c:0:1}\" = 5 ]"
port=$(sed 's/.*port=\([0-9]*\).*/\1/' "$PGDIR/dsn")
must "PostgreSQL started again on port $port" pg_as "$PGBIN/pg_ctl" -D "$PGREAL/data" -l "$PGREAL/server.log" -w -t 30 \
  -o "-p $port -k $PGREAL -c listen_addresses=127.0.0.1 -c fsync=off" start
api_ok() { [ "$(ctl_get "$1" /api/v1/devices | jq '.devices | length')" = "$N" ]; }
check "instance 1 answers from the database again" fleet_wait 30 api_ok 1
check "instance 2 answers from the database again" fleet_wait 30 api_ok 2
check "the reconnect is logged (lost, then reconnected)" \
  bash -c "grep -q 'store(pg): connection lost' '$FLEET_DIR/ctl-1.log' && grep -q 'store(pg): reconnected' '$FLEET_DIR/ctl-1.log'"
retries=$(grep -c 'store(pg): reconnect failed' "$FLEET_DIR/ctl-1.log")
check "reconnect attempts back off (instance 1: $retries failed attempts in the ~4 s down)" [ "$retries" -le 12 ]
spam=$(grep -cE 'telemetry commit|rollout tick' "$FLEET_DIR/ctl-1.log")
check "failing ticks are logged when they start and end, not every tick ($spam lines)" [ "$spam" -le 6 ]
must "rollout of 2.0 created after the restart (waves 50,100 %)" create 1 \
  '{"model":"tiny","version":"2.0","waves":[50,100],"soak_s":1,"max_concurrent":20,
    "max_failure_rate":0.2,"min_sample":2}'
R2=$RID
check "rollout $R2 completes (<= 120 s)" fleet_wait 120 is_state 1 "$R2" completed
check "every device on 2.0" fleet_wait 20 all_on 2 2.0
n_before=$(psql_q "SELECT count(*) FROM telemetry")
newer() { [ "$(psql_q "SELECT count(*) FROM telemetry")" -gt "$n_before" ]; }
check "telemetry is stored again after the restart" fleet_wait 20 newer
check "still every record once, no holes, after the restart" fleet_wait 20 no_holes
check "still no gap reported after the restart" fleet_wait 15 gaps0
check "one engine: rollout $R2 has one deploy per device" \
  [ "$(audit "$R2" | grep '^rollout\.deploy|' | sed 's/.* sent to //' | sort | uniq -d | wc -l)" = 0 ]
echo "part 4 in $((SECONDS - t4)) s; total $((SECONDS - t0)) s"
sanitizer() { grep -l -E 'Sanitizer|runtime error:' "$FLEET_DIR"/ctl-*.log "$FLEET_DIR"/*/agent.log 2>/dev/null; }
check "no sanitizer report in the controllers' or agents' logs ($(sanitizer | tr '\n' ' '))" [ -z "$(sanitizer)" ]
if [ "$fails" != 0 ]; then
  for k in 1 2; do echo "--- controller $k log (tail)"; tail -n 25 "$FLEET_DIR/ctl-$k.log"; done
fi
finish
