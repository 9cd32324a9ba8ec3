#!/usr/bin/env bash
# systemd notifications of `flotilla-agent run` (docs/install.md "Watchdog"):
# READY=1 at start, WATCHDOG=1 that keeps arriving while a long spool install
# (many acceptance tests) runs inside the service loop, STOPPING=1 at
# SIGTERM. NOTIFY_SOCKET is a datagram socket read by a small python3 script
# that stamps every message.
#
#   agent_notify.sh FLOTILLA AGENT MKMODEL
set -uo pipefail
FLOTILLA=$1 AGENT=$2 MKMODEL=$3
. "$(dirname "$0")/lib.sh"
for t in jq python3 sqlite3; do command -v $t >/dev/null || { echo "FAIL: $t not installed"; exit 1; }; done
mk_tmp agent_notify
svc= lis=
cleanup() {
  [ -n "$svc" ] && kill "$svc" 2>/dev/null
  [ -n "$lis" ] && kill "$lis" 2>/dev/null
  wait 2>/dev/null; [ -n "${FL_KEEP_TMP:-}" ] || rm -rf "$tmp"
}
trap cleanup EXIT
mk_trust "$tmp" tiny
T=$tmp/trust S=$tmp/state
# A wider model than mk_model's (3.5 MiB, ~1000 tok/s on one core) and 48
# acceptance tests of 200 tokens each: several seconds of acceptance on any
# machine, longer than WATCHDOG_USEC below and the agent's 1 s tick.
mkdir -p "$tmp/m"
"$MKMODEL" --arch llama --vocab tiny --dim 256 --layers 4 --heads 4 --kv-heads 2 --ffn 768 \
  --ctx 256 --type q8_0 --seed 1 -o "$tmp/m/model.gguf" >/dev/null
created=$(date -u +%Y-%m-%dT%H:%M:%SZ); expires=$(date -u -d '+30 days' +%Y-%m-%dT%H:%M:%SZ)
jq -n --arg c "$created" --arg e "$expires" '{name: "tiny", version: "1.0", sequence: 1,
  created: $c, expires: $e, compatibility: {backend: "gguf"}, runtime: {context_length: 256, threads: 1},
  acceptance: [range(64) | {name: "t\(.)", prompt: "Hello", max_tokens: 240}]}' >"$tmp/t1.json"
"$FLOTILLA" bundle create --template "$tmp/t1.json" --key "$tmp/keys/release.pem" -o "$tmp/v1.tar" "$tmp/m/model.gguf" >/dev/null
check "bundle with 64 acceptance tests built" test -s "$tmp/v1.tar"
# The watchdog period for this machine and build: 4 times one test's
# generation (sanitizer builds are 20x slower), at least 2 s. 64 tests then
# take far longer than it, and pings per test stay well inside it.
s0=$(date +%s.%N)
"$AGENT" run-model "$tmp/m/model.gguf" --prompt Hello -n 240 -t 1 >/dev/null 2>&1
t_one=$(awk -v a="$s0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
wd_s=$(awk -v t="$t_one" 'BEGIN { w = 4 * t; if (w < 2) w = 2; printf "%d", w + 0.999 }')
echo "one 240-token test: $t_one s; WATCHDOG_USEC $wd_s s"

# The listener: one line per datagram, "WALLCLOCK_S MESSAGE" (newlines in a
# message become '|'); exits after STOPPING=1 or 600 s.
cat >"$tmp/listen.py" <<'EOF'
import socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
s.settimeout(1.0)
end = time.time() + 600
with open(sys.argv[2], "w", buffering=1) as out:
    while time.time() < end:
        try:
            msg = s.recv(4096).decode(errors="replace")
        except socket.timeout:
            continue
        out.write("%.3f %s\n" % (time.time(), msg.replace("\n", "|")))
        if "STOPPING=1" in msg:
            break
EOF
python3 "$tmp/listen.py" "$tmp/notify.sock" "$tmp/notify.log" &
lis=$!
for _ in $(seq 1 50); do [ -S "$tmp/notify.sock" ] && break; sleep 0.1; done
check "listener socket ready" test -S "$tmp/notify.sock"

mkdir -p "$S/spool"
WATCHDOG_USEC=$((wd_s * 1000000)) NOTIFY_SOCKET=$tmp/notify.sock \
  "$AGENT" --state-dir "$S" --trust-dir "$T" run 2>"$tmp/agent.log" &
svc=$!
for _ in $(seq 1 50); do grep -q 'READY=1' "$tmp/notify.log" 2>/dev/null && break; sleep 0.1; done
check "READY=1 at start" grep -q 'READY=1' "$tmp/notify.log"
check "READY=1 is the first message" bash -c "head -1 '$tmp/notify.log' | grep -q READY=1"
cp "$tmp/v1.tar" "$S/spool/.v1.part" && touch -d '-1 min' "$S/spool/.v1.part" && mv "$S/spool/.v1.part" "$S/spool/v1.tar"
state() { sqlite3 "$S/state.db" "SELECT state FROM installs WHERE version='1.0'" 2>/dev/null; }
for _ in $(seq 1 1500); do [ "$(state)" = 6 ] && break; kill -0 "$svc" 2>/dev/null || break; sleep 0.2; done
check "the long install committed" [ "$(state)" = 6 ]
sleep 1.5 # a tick or two after the install
kill -TERM "$svc"; wait "$svc"; rc=$?; svc=
check "service stops cleanly" [ $rc -eq 0 ]
wait "$lis"; lis=
check "STOPPING=1 at SIGTERM, as the last message" bash -c "tail -1 '$tmp/notify.log' | grep -q STOPPING=1"

# The install's span from the service log (UTC timestamps, ms).
ts() { grep -m1 "$1" "$tmp/agent.log" | cut -d' ' -f1 | xargs -I{} date -u -d {} +%s.%N; }
t0=$(ts 'install.started tiny 1.0') t1=$(ts 'install.committed tiny 1.0')
read -r dur n_in max_gap < <(awk -v a="$t0" -v b="$t1" '
  $2 == "WATCHDOG=1" { if (prev && $1 - prev > gap) gap = $1 - prev; prev = $1;
                       if ($1 >= a && $1 <= b) n++ }
  END { printf "%.2f %d %.2f\n", b - a, n, gap }' "$tmp/notify.log")
echo "install took $dur s; $n_in WATCHDOG=1 during it; longest gap between pings $max_gap s (WATCHDOG_USEC $wd_s s)"
check "the install lasted longer than the watchdog period (${dur} s > $wd_s s)" awk -v d="$dur" -v w="$wd_s" 'BEGIN { exit !(d > w) }'
check "WATCHDOG=1 kept arriving during the install ($n_in)" [ "$n_in" -ge 10 ]
check "no gap between pings reached WATCHDOG_USEC (${max_gap} s < $wd_s s)" awk -v g="$max_gap" -v w="$wd_s" 'BEGIN { exit !(g < w) }'
finish
