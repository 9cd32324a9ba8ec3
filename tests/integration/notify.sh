#!/usr/bin/env bash
# sd_notify from the real programs, as systemd (Type=notify, WatchdogSec=1s)
# would see it: NOTIFY_SOCKET is a datagram socket read by a small python3
# listener standing in for the manager, WATCHDOG_USEC=1000000 and
# WATCHDOG_PID the program's own pid. For flotilla-controller (HTTP only) and
# flotilla-agent `run` (offline, own state dir): READY=1 first, WATCHDOG=1
# repeatedly and never more than WATCHDOG_USEC/2 apart (sd_notify(3)), STOPPING=1 on
# SIGTERM, exit 0. (The agent's pings during long installs are tested in
# install tests; this one is start/ping/stop.)
#
#   notify.sh FLOTILLA AGENT CONTROLLER
set -uo pipefail
FLOTILLA=$1 AGENT=$2 CONTROLLER=$3
. "$(dirname "$0")/lib.sh"
command -v python3 >/dev/null || { echo "FAIL: python3 not installed"; exit 1; }
mk_tmp notify
lpid= ppid_=
cleanup() {
  [ -n "$ppid_" ] && kill -KILL "$ppid_" 2>/dev/null
  [ -n "$lpid" ] && kill "$lpid" 2>/dev/null
  wait 2>/dev/null
  [ -n "${FL_KEEP_TMP:-}" ] || rm -rf "$tmp"
}
trap cleanup EXIT

# The manager's side: one line per datagram, "MONO_SECONDS<TAB>a|b|c".
cat >"$tmp/listen.py" <<'EOF'
import os, socket, sys, time
path, out = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(path)
with open(out, "a", buffering=1) as f:
    while True:
        msg = s.recv(4096).decode("utf-8", "replace")
        f.write("%.3f\t%s\n" % (time.monotonic(), msg.strip().replace("\n", "|")))
EOF

# run_notified NAME COMMAND...: start COMMAND under the fake manager, let it
# run 3 s, SIGTERM it, then check what the manager heard.
run_notified() {
  local name=$1; shift
  local sock=$tmp/$name.sock log=$tmp/$name.notify
  : >"$log"
  python3 "$tmp/listen.py" "$sock" "$log" &
  lpid=$!
  for _ in $(seq 50); do [ -S "$sock" ] && break; sleep 0.1; done
  # WATCHDOG_PID must name the program itself: set it from the shell that
  # execs it.
  NOTIFY_SOCKET=$sock WATCHDOG_USEC=1000000 \
    bash -c 'export WATCHDOG_PID=$$; exec "$@"' _ "$@" >"$tmp/$name.out" 2>&1 &
  ppid_=$!
  for _ in $(seq 100); do grep -q 'READY=1' "$log" && break; kill -0 $ppid_ 2>/dev/null || break; sleep 0.1; done
  check "$name: READY=1 sent" grep -q 'READY=1' "$log"
  check "$name: READY=1 is the first message" bash -c "head -1 '$log' | grep -q 'READY=1'"
  sleep 3
  local n
  n=$(grep -c 'WATCHDOG=1' "$log")
  check "$name: WATCHDOG=1 repeated over 3 s ($n pings, >= 6 needed at 1 s / 2)" [ "$n" -ge 6 ]
  # The largest gap between pings (and from READY to the first) must stay
  # under WATCHDOG_USEC/2 = 0.5 s: systemd would kill the service at 1 s.
  local gap
  gap=$(awk -F'\t' '/READY=1|WATCHDOG=1/ { if (p != "") { g = $1 - p; if (g > m) m = g } p = $1 } END { printf "%.3f", m }' "$log")
  check "$name: largest gap between pings ${gap} s < 0.5 s" awk "BEGIN { exit !($gap < 0.5) }"
  kill -TERM $ppid_
  local rc=0 end=$((SECONDS + 20))
  while kill -0 $ppid_ 2>/dev/null && [ $SECONDS -lt $end ]; do sleep 0.1; done
  kill -KILL $ppid_ 2>/dev/null
  wait $ppid_ || rc=$?
  ppid_=
  check "$name: exit 0 after SIGTERM (got $rc)" [ "$rc" = 0 ]
  sleep 0.2
  check "$name: STOPPING=1 sent on SIGTERM" grep -q 'STOPPING=1' "$log"
  check "$name: READY=1 sent once" \
    [ "$(grep -c 'READY=1' "$log")" = 1 ]
  kill "$lpid" 2>/dev/null; wait "$lpid" 2>/dev/null; lpid=
  [ "$fails" -eq 0 ] || { echo "--- $name notifications"; tail -5 "$log"; echo "--- $name output"; tail -20 "$tmp/$name.out"; }
}

# The controller: its store in a fresh data dir, HTTP on a free port, no broker.
cat >"$tmp/controller.conf" <<EOC
[controller]
data_dir = $tmp/ctl
listen = 127.0.0.1
port = 0
EOC
run_notified controller "$CONTROLLER" --config "$tmp/controller.conf" --port-file "$tmp/ctl.port"

# The agent: `run` offline (no [mqtt]), its own state dir and trust.
mk_trust "$tmp" tiny
mkdir -p "$tmp/state"
cat >"$tmp/agent.conf" <<EOC
[agent]
state_dir = $tmp/state
trust_dir = $tmp/trust
EOC
run_notified agent "$AGENT" --config "$tmp/agent.conf" run

finish
