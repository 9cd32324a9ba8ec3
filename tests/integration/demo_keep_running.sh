#!/usr/bin/env bash
# The demo with --keep-running (packaging/demo/run.sh): after its RESULT
# line the fleet stays up (the demo process waits, the broker, controller
# and every agent keep running, the controller's /healthz and a device's
# local API answer, some seconds later too), and the stop command it prints
# (`kill PID`) stops all of it: the demo exits 0, no process it started is
# left, the broker's, controller's and local API's ports are free, and its
# directory is gone.
#
#   demo_keep_running.sh BUILD_DIR
set -uo pipefail
if [ $# -ne 1 ]; then echo "usage: demo_keep_running.sh BUILD_DIR" >&2; exit 2; fi
B=$1
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
command -v ss >/dev/null || { echo "FAIL: ss (iproute2) not installed"; exit 1; }
base=${FL_TEST_TMPDIR:-/tmp}
mkdir -p "$base"
log=$(mktemp "$base/demo_keep_running.XXXXXX.log")
D= pid=
# On any exit: whatever is still running goes (the demo's process group).
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null
    timeout 20 tail --pid="$pid" -f /dev/null || kill -KILL -- "-$pid" 2>/dev/null
  fi
  [ -n "$D" ] && [ -d "$D" ] && [ -n "$(pgrep -f "$D/")" ] && pkill -KILL -f "$D/"
  if [ "$fails" = 0 ]; then rm -f "$log"; [ -n "$D" ] && rm -rf "$D"; fi
}
trap cleanup EXIT

# Its own process group (job control), so the cleanup above reaches all of
# it; the demo's own stop must not need that.
set -m
bash "$here/../../packaging/demo/run.sh" "$B" --keep-running --agents 4 >"$log" 2>&1 &
pid=$!
set +m
t0=$SECONDS
for _ in $(seq $(( ${FL_DEMO_TIMEOUT_S:-240} * 5 ))); do
  grep -q '^RESULT ' "$log" && grep -q 'stop: ' "$log" && break
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.2
done
res=$(grep '^RESULT ' "$log" | tail -1)
echo "${res:-no RESULT line} (after $((SECONDS - t0)) s)"
check "the demo printed its RESULT line" [ -n "$res" ]
check "the demo's checks passed" grep -q '^RESULT v1=OK v2=OK v3=halted .* answer=yes refused=2/2 ' "$log"
D=$(grep -o '/[^ ]*/flotilla-demo\.[A-Za-z0-9]*' "$log" | head -1)
url=$(sed -n 's/.*controller on \(http:\/\/127\.0\.0\.1:[0-9]*\).*/\1/p' "$log" | head -1)
api=$(sed -n 's/.*local API: \(http:\/\/127\.0\.0\.1:[0-9]*\)\/v1.*/\1/p' "$log" | head -1)
mqtt=$(sed -n 's/.*mosquitto on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$log" | head -1)
stop=$(sed -n 's/^ *stop: *\(kill [0-9]*\).*/\1/p' "$log" | head -1)
echo "dir ${D:-?} controller ${url:-?} api ${api:-?} mqtt ${mqtt:-?} stop '${stop:-?}'"
check "it printed its directory, addresses and a stop command" \
  [ -n "$D" ] && [ -n "$url" ] && [ -n "$api" ] && [ -n "$mqtt" ] && [ -n "$stop" ]
if [ "$fails" != 0 ]; then tail -n 40 "$log"; finish; exit 1; fi
check "the stop command names the demo's process ($stop, pid $pid)" [ "$stop" = "kill $pid" ]

up() { # everything still up?
  kill -0 "$pid" 2>/dev/null || { echo "the demo exited"; return 1; }
  [ "$(curl -s -m 5 -o /dev/null -w '%{http_code}' "$url/healthz")" = 200 ] ||
    { echo "controller /healthz"; return 1; }
  [ "$(curl -s -m 5 -o /dev/null -w '%{http_code}' "$api/healthz")" = 200 ] ||
    { echo "local API /healthz"; return 1; }
  [ "$(pgrep -f "$D/[a-z]+-[0-9]+/agent.conf run" | wc -l)" = 4 ] ||
    { echo "agents: $(pgrep -f "$D/[a-z]+-[0-9]+/agent.conf run" | wc -l) of 4"; return 1; }
  [ "$(pgrep -f "flotilla-controller --config $D/" | wc -l)" = 1 ] || { echo "controller process"; return 1; }
  ss -Htln "sport = :$mqtt" | grep -q . || { echo "broker port $mqtt"; return 1; }
}
check "right after RESULT: demo, broker, controller (/healthz), 4 agents, local API up" up
# A completion through the kept device's local API: the model is loaded and serves.
ans=$(curl -s -m 60 -H 'Content-Type: application/json' \
  -d '{"prompt": "Still there?", "max_tokens": 4}' "$api/v1/completions")
check "the local API still answers a completion" \
  [ "$(jq -r '.choices[0].text | type' <<<"$ans" 2>/dev/null)" = string ]
# The CLI against the kept controller, as the demo says.
ot=$(sed -n 's/.*FLOTILLA_TOKEN=\([^;]*\);.*/\1/p' "$log" | head -1)
n=$(FLOTILLA_CONTROLLER=$url FLOTILLA_TOKEN=$ot "$B/controller/cli/flotilla" rollout list --json 2>/dev/null |
  jq 'if type == "array" then length else (.rollouts | length) end' 2>/dev/null)
check "the CLI, as the demo says, lists its 3 rollouts on the kept controller (${n:-none})" [ "$n" = 3 ]
sleep 5
check "5 s later: everything still up" up
pids=$(pgrep -f "$D/" | tr '\n' ' ')

# The printed stop command, from outside the demo's process group.
t1=$SECONDS
bash -c "$stop"
timeout 40 tail --pid="$pid" -f /dev/null
check "the demo stopped within 40 s of '$stop' ($((SECONDS - t1)) s)" bash -c "! kill -0 $pid 2>/dev/null"
wait "$pid"; st=$?
check "the demo exits 0 when stopped after a good run ($st)" [ "$st" = 0 ]
# A zombie has stopped (the daemonized broker's parent is init, which reaps
# it a moment later): only live processes count.
live() { [ -e "/proc/$1" ] && ! grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null; }
leftover() { for p in $pids; do live "$p" && echo "$p"; done | tr '\n' ' '; }
left=$(leftover)
left2=$(pgrep -f "$D/" | tr '\n' ' ')
check "no process it started is left (${left:-none}; by dir: ${left2:-none})" [ -z "$left$left2" ]
busy=
for p in "${mqtt}" "${url##*:}" "${api##*:}"; do
  ss -Htan "sport = :$p" | grep -qv TIME-WAIT && busy+=" $p"
done
check "the broker's, controller's and local API's ports are free (${busy:-all free})" [ -z "$busy" ]
check "the controller refuses connections now" \
  bash -c "! curl -s -m 3 -o /dev/null '$url/healthz'"
check "its directory is removed ($D)" [ ! -e "$D" ]
[ "$fails" = 0 ] || tail -n 40 "$log"
finish
