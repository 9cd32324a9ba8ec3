#!/usr/bin/env bash
# Controller figures (Flotilla issue 9), with DEVICES devices in the store
# (default 10 000), measured by bench/controller_bench in one process:
#  1. HTTP API: requests/s, p50 and p99 with CLIENTS keep-alive clients for
#     the full device list, a filtered page of 100 devices and the rollout
#     status; GET /healthz is the reference measured in the same run (the
#     HTTP stack alone), printed as a ratio.
#  2. Rollout engine: the duration (wall and CPU) of the tick that decides
#     and sends each wave (waves 1, 10, 50, 100 percent, health gates on),
#     of a tick while the wave installs with the gates evaluated and with
#     them not due, and of the tick that completes the rollout.
#
#   bench/controller.sh [BUILD_DIR (build/dev)]
#   DEVICES (10000), BENCH_SECONDS per endpoint (5), CLIENTS (4)
set -euo pipefail
B=${1:-build/dev}
BENCH=$B/bench/controller_bench
[ -x "$BENCH" ] || { echo "controller bench: $BENCH not built" >&2; exit 1; }
export FLOTILLA_LOG_LEVEL=warn
DEVICES=${DEVICES:-10000} SECONDS_PER=${BENCH_SECONDS:-5} CLIENTS=${CLIENTS:-4}
echo "controller bench: $DEVICES devices, $CLIENTS clients, ${SECONDS_PER} s per endpoint ($(nproc) cores)"
out=$(timeout 900 "$BENCH" "$DEVICES" "$SECONDS_PER" "$CLIENTS")
echo "$out"
# Summary lines: the figures the issue asks for.
echo "$out" | awk '
  /^api devices\(all\)/   { printf "summary: device list (%s devices): %s requests/s, p99 %s ms\n", n, $3, $9 }
  /^api rollout-status/   { printf "summary: rollout status: %s requests/s, p99 %s ms\n", $3, $9 }
  /decision tick/         { w = $3; sub(":", "", w); printf "summary: rollout decision, wave %s: %s ms (cpu %s ms)\n", w, $6, $9 }
' n="$DEVICES"
