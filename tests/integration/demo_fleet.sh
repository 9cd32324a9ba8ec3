#!/usr/bin/env bash
# The demo (packaging/demo/run.sh, the README's first command) against this
# build: it must finish on its own, say what happened, and the fleet it
# leaves behind (kept with FLEET_KEEP=1, all processes stopped) must agree:
# every agent's own status shows v2 current (v1, a reverted v3 or nothing
# after a rejected v3 in the other slot),
# the broken v3 was halted (audit log) and never became current anywhere,
# the local API answered, and nothing it started is still running.
#
#   demo_fleet.sh BUILD_DIR FLOTILLA_AGENT
set -uo pipefail
if [ $# -ne 2 ]; then echo "usage: demo_fleet.sh BUILD_DIR AGENT" >&2; exit 2; fi
B=$1 AGENT=$2
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
command -v sqlite3 >/dev/null || { echo "FAIL: sqlite3 not installed"; exit 1; }
base=${FL_TEST_TMPDIR:-/tmp}
mkdir -p "$base"
log=$(mktemp "$base/demo_fleet.XXXXXX.log")
t0=$SECONDS
FLEET_KEEP=1 timeout -s INT "${FL_DEMO_TIMEOUT_S:-240}" bash "$here/../../packaging/demo/run.sh" "$B" >"$log" 2>&1
rc=$?
echo "demo: exit $rc in $((SECONDS - t0)) s"
D=$(sed -n 's/^fleet: files kept in //p' "$log" | tail -1)
cleanup() { [ -n "$D" ] && [ "$fails" = 0 ] && rm -rf "$D"; [ "$fails" = 0 ] && rm -f "$log"; }
trap cleanup EXIT
res=$(grep '^RESULT ' "$log" | tail -1)
echo "${res:-no RESULT line}"
check "the demo exits 0" [ $rc -eq 0 ]
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$res"; }
check "v1 rolled out to every device (controller's view)" [ "$(field v1)" = OK ]
check "v2 rolled out to every device" [ "$(field v2)" = OK ]
check "v3's rollout halted" [ "$(field v3)" = halted ]
n=$(field devices_on_v2)
check "every device runs v2 afterwards ($n)" bash -c "[ -n '$n' ] && [ '${n%/*}' = '${n#*/}' ]"
check "the device's local API answered" [ "$(field answer)" = yes ]
check "the tampered bundle and the replay were refused" [ "$(field refused)" = 2/2 ]
moved=$(field moved) size=$(field size)
check "the fine-tune moved under a quarter of the model ($moved of $size bytes)" \
  bash -c "[ -n '$moved' ] && [ '$moved' -gt 0 ] && [ '$moved' -lt $(( ${size:-0} / 4 )) ]"
check "progress was visible: wave lines from rollout status --watch" \
  grep -q 'rollout 1: tiny-chat@1.0.0 running, wave 2 of 3' "$log"
check "the dashboard's address was printed" grep -q 'dashboard: http://127.0.0.1:[0-9]*/' "$log"
if [ -z "$D" ] || [ ! -d "$D" ]; then
  bad "the demo's files were not kept (FLEET_KEEP=1): nothing more to check"
  tail -n 30 "$log"; finish; exit 1
fi
# Every agent's own status (read from its state directory; it is stopped).
devs=$(cd "$D" && ls -d gw-* box-* 2>/dev/null)
check "at least 4 devices of 2 classes" bash -c "[ $(wc -w <<<"$devs") -ge 4 ] && grep -q box <<<'$devs' && grep -q gw <<<'$devs'"
slots() { "$AGENT" -c "$D/$1/agent.conf" status --json 2>/dev/null |
  jq -r '.models["tiny-chat"] as $m | "\($m.slots[$m.current].version) \([$m.slots[].version] | sort | join(","))"'; }
okdevs=0
for d in $devs; do
  s=$(slots "$d")
  case $s in
    # the other slot: v1; a v3 reverted from; or emptied by a rejected v3
    "1.1.0 1.0.0,1.1.0"|"1.1.0 1.1.0,1.2.0-x86"|"1.1.0 ,1.1.0") okdevs=$((okdevs + 1)) ;;
    *) echo "$d: $s" ;;
  esac
done
check "each agent's own status: v2 current, never v3 ($okdevs of $(wc -w <<<"$devs"))" \
  [ "$okdevs" = "$(wc -w <<<"$devs")" ]
db=$D/controller-data/controller.db
check "the audit log has the v3 rollout's halt" \
  [ "$(sqlite3 -readonly "$db" "SELECT count(*) FROM audit WHERE action = 'rollout.halt' AND reason LIKE 'rollout 3: %'")" = 1 ]
check "v1's and v2's rollouts completed (audit)" \
  [ "$(sqlite3 -readonly "$db" "SELECT count(*) FROM audit WHERE action = 'rollout.complete'")" = 2 ]
san=$(grep -l -E 'Sanitizer|runtime error:' "$D"/controller.log "$D"/*/agent.log 2>/dev/null | tr '\n' ' ')
check "no sanitizer report in the controller's or agents' logs (${san:-none})" [ -z "$san" ]
left=$(pgrep -f "$D/" 2>/dev/null | tr '\n' ' ')
check "nothing the demo started is still running (${left:-none})" [ -z "$left" ]
[ "$fails" = 0 ] || tail -n 40 "$log"

# Ctrl-C in the middle of a rollout: SIGINT to the demo's process group, as
# a terminal sends it; everything it started must stop.
log2=$log.int
# (job control: the demo gets its own process group and, unlike a plain
# background job, does not start with SIGINT ignored)
set -m
bash "$here/../../packaging/demo/run.sh" "$B" --agents 4 >"$log2" 2>&1 &
pid=$!
set +m
in_rollout() { grep -q '== 4\.' "$log2"; }
for _ in $(seq 300); do in_rollout && break; kill -0 $pid 2>/dev/null || break; sleep 0.2; done
check "the second demo reached its first rollout" in_rollout
D2=$(grep -o '/[^ ]*/flotilla-demo\.[A-Za-z0-9]*' "$log2" | head -1)
kill -INT -- -$pid 2>/dev/null
st=0
timeout 40 tail --pid=$pid -f /dev/null || { bad "the demo did not stop within 40 s of SIGINT"; kill -KILL -- -$pid; }
wait $pid; st=$?
check "after SIGINT the demo exits 130 ($st)" [ "$st" = 130 ]
left=$( [ -n "$D2" ] && pgrep -f "$D2/" | tr '\n' ' ')
check "after SIGINT nothing it started is running (${left:-none}; ${D2:-no dir})" [ -n "$D2" ] && [ -z "$left" ]
[ -n "$D2" ] && rm -rf "$D2"
[ "$fails" = 0 ] && rm -f "$log2" || tail -n 20 "$log2"
finish
