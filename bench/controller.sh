#!/usr/bin/env bash
# Controller figures (Flotilla issue 9), with DEVICES devices in the store
# (default 10 000), measured by bench/controller_bench in one process:
#  1. HTTP API: requests/s, p50 and p99 with CLIENTS keep-alive clients for
#     the full device list (?all=1), the first page (default size), a page
#     after a cursor in the middle, a filtered page of 100 devices and the
#     rollout status; GET /healthz is the reference measured in the same run (the
#     HTTP stack alone), printed as a ratio.
#  1b. State ingest: states/s of the whole fleet's state messages, one
#     transaction each against the batched path of the MQTT loop.
#  2. Rollout engine: the duration (wall and CPU) of the tick that decides
#     and sends each wave (waves 1, 10, 50, 100 percent, health gates on),
#     of a tick while the wave installs with the gates evaluated and with
#     them not due, and of the tick that completes the rollout.
#
#   bench/controller.sh [BUILD_DIR (build/dev)]
#   DEVICES (10000), BENCH_SECONDS per endpoint (5), CLIENTS (4),
#   STORE=pg: the same against a throwaway PostgreSQL (tests/pg/start.sh)
set -euo pipefail
B=${1:-build/dev}
BENCH=$B/bench/controller_bench
[ -x "$BENCH" ] || { echo "controller bench: $BENCH not built" >&2; exit 1; }
export FLOTILLA_LOG_LEVEL=warn
DEVICES=${DEVICES:-10000} SECONDS_PER=${BENCH_SECONDS:-5} CLIENTS=${CLIENTS:-4}
if [ "${STORE:-sqlite}" = pg ]; then
  pgdir=$(mktemp -d "${TMPDIR:-/var/tmp}/flotilla-ctl-bench-pg.XXXXXX")
  trap '"$(dirname "$0")/../tests/pg/stop.sh" "$pgdir"' EXIT
  "$(dirname "$0")/../tests/pg/start.sh" "$pgdir" >/dev/null
  export BENCH_STORE_DSN=$(cat "$pgdir/dsn")
  echo "controller bench: store PostgreSQL ($BENCH_STORE_DSN)"
fi
echo "controller bench: $DEVICES devices, $CLIENTS clients, ${SECONDS_PER} s per endpoint ($(nproc) cores)"
out=$(timeout 900 "$BENCH" "$DEVICES" "$SECONDS_PER" "$CLIENTS")
echo "$out"
# Summary lines: the figures the issue asks for.
echo "$out" | awk '
  function cpu(  m) { return match($0, /cpu [0-9.]+ ms\/request/) ? ", " substr($0, RSTART, RLENGTH) : "" }
  /^api devices\(all\)/   { printf "summary: full device list (?all=1, %s devices): %s requests/s, p99 %s ms%s\n", n, $3, $9, cpu() }
  /^api devices\(page\)/  { printf "summary: device list page (default 1000): %s requests/s, p99 %s ms%s\n", $3, $9, cpu() }
  /^api devices\(page@mid\)/ { printf "summary: device list page after a cursor: %s requests/s, p99 %s ms%s\n", $3, $9, cpu() }
  /^api devices\(100\)/   { printf "summary: filtered page of 100 (label): %s requests/s, p99 %s ms%s\n", $3, $9, cpu() }
  /^api rollout-status/   { printf "summary: rollout status: %s requests/s, p99 %s ms%s\n", $3, $9, cpu() }
  /^fleet summary in-process/ { printf "summary: %s\n", $0 }
  /^state ingest:/        { printf "summary: %s\n", $0 }
  /decision tick/         { w = $3; sub(":", "", w); printf "summary: rollout decision, wave %s: %s ms (cpu %s ms)\n", w, $6, $9 }
' n="$DEVICES"
