#!/usr/bin/env bash
# Stop a broker started with start-broker.sh DIR: SIGTERM, wait up to
# FL_BROKER_WAIT_S (5 s), then SIGKILL. Only a process whose name is
# mosquitto and whose pid is in DIR/broker/mosquitto.pid is signalled.
# Exit 0 when no broker of DIR runs any more (also when none was running).
set -euo pipefail

if [ $# -ne 1 ]; then
  echo "usage: stop-broker.sh DIR" >&2
  exit 2
fi
pidfile=$1/broker/mosquitto.pid
wait_s=${FL_BROKER_WAIT_S:-5}

[ -s "$pidfile" ] || exit 0
pid=$(cat "$pidfile")
case $pid in ''|*[!0-9]*) echo "stop-broker: $pidfile does not hold a pid" >&2; exit 1 ;; esac

ours() {
  [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = mosquitto ] &&
    ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null
}

if ours; then
  kill -TERM "$pid" 2>/dev/null || true
  deadline=$(( $(date +%s) + wait_s ))
  while ours && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.05; done
  if ours; then
    echo "stop-broker: pid $pid ignored SIGTERM for ${wait_s}s; killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.1
  fi
fi
rm -f "$pidfile"
if ours; then
  echo "stop-broker: pid $pid still running" >&2
  exit 1
fi
exit 0
