#!/usr/bin/env bash
# The Flotilla demo: a local fleet on 127.0.0.1 doing staged rollouts.
#
#   packaging/demo/run.sh BUILD_DIR [--keep-running] [--agents N]
#
# Starts mosquitto (mutual TLS + the Flotilla ACL), the controller (API,
# /metrics, dashboard) and N agents (default 6, at least 4) of two hardware
# classes: x86_64 gateways and aarch64 boxes, each with its own state
# directory. Then: keys and a root-signed keyring, a tiny GGUF model v1
# signed and rolled out in waves, a fine-tuned v2 (few bytes move), a broken
# v3 that the failure gate halts, a question to one device's local
# OpenAI-compatible API, and where the dashboard is. Everything it started
# is stopped at the end or on Ctrl-C, unless --keep-running: then the
# fleet stays up after the RESULT line until Ctrl-C or the printed
# `kill PID` (this script's pid; SIGTERM, SIGINT or SIGHUP), which stop it
# all. What it does and why: docs/demo.md.
#
# The last line is a machine-readable summary (tests/integration/demo_fleet.sh):
#   RESULT v1=OK v2=OK v3=halted devices_on_v2=N/N answer=yes refused=2/2 moved=BYTES ...
set -uo pipefail
usage() { sed -n '4,5p' "$0" | sed 's/^# *//' >&2; exit 2; }
[ $# -ge 1 ] || usage
B=$(cd "$1" 2>/dev/null && pwd) || { echo "demo: $1: no such build directory" >&2; exit 2; }
shift
KEEP=0 N=6
while [ $# -gt 0 ]; do
  case $1 in
    --keep-running) KEEP=1 ;;
    --agents) [ $# -ge 2 ] || usage; N=$2; shift ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "demo: unknown option $1" >&2; usage ;;
  esac
  shift
done
case $N in ''|*[!0-9]*) echo "demo: --agents takes a number" >&2; exit 2 ;; esac
[ "$N" -ge 4 ] && [ "$N" -le 32 ] || { echo "demo: --agents must be 4..32" >&2; exit 2; }

FLEET_FLOTILLA=$B/controller/cli/flotilla
FLEET_CONTROLLER_BIN=$B/controller/flotilla-controller
FLEET_AGENT_BIN=$B/agent/flotilla-agent
MKMODEL=$B/runtime/tools/mkmodel
FINETUNE=$B/runtime/tools/finetune
for p in "$FLEET_FLOTILLA" "$FLEET_CONTROLLER_BIN" "$FLEET_AGENT_BIN" "$MKMODEL" "$FINETUNE"; do
  [ -x "$p" ] || { echo "demo: $p missing: build first (cmake --build $B)" >&2; exit 1; }
done
. "$(dirname "$0")/fleet-lib.sh"
FL=$FLEET_FLOTILLA
export FLOTILLA_LOG_LEVEL=${FLOTILLA_LOG_LEVEL:-warn}
export FLOTILLA_TOKEN=$FLEET_OT

T0=$SECONDS
if [ -t 1 ]; then
  step() { printf '\n\033[1m[%3ds] == %s\033[0m\n' $((SECONDS - T0)) "$*"; }
else
  step() { printf '\n[%3ds] == %s\n' $((SECONDS - T0)) "$*"; }
fi
say() { printf '   %s\n' "$*"; }
run() { printf '$ %s\n' "$*" | sed "s#$B/[a-z/]*/##g; s#$FLEET_DIR/##g"; "$@"; }
die() { echo "demo: FAILED: $*" >&2; FLEET_FAILED=1; exit 1; }

MODEL=tiny-chat
GW=() BOX=()
for ((i = 1; i <= N; i++)); do
  if ((i % 2)); then GW+=("gw-$(( (i + 1) / 2 ))"); else BOX+=("box-$(( i / 2 ))"); fi
done
ALL=("${GW[@]}" "${BOX[@]}")

# ------------------------------------------------------------------ fleet
step "1. A local fleet: broker (mutual TLS + ACL), controller, $N agents"
fleet_init flotilla-demo
fleet_pki "${ALL[@]}"
say "PKI: CA, broker and controller certificates, one device certificate each"
fleet_broker_start
say "mosquitto on 127.0.0.1:$FLEET_MQTT_PORT (TLS, client certificates, per-device ACL)"
fleet_trust "$MODEL"
fleet_controller_start
say "controller on $FLEET_URL (MQTT: connected as flotilla-controller)"
fleet_agent_start "${GW[0]}" "role=gateway,site=plant-7" x86_64 4096 serve
for d in "${GW[@]:1}"; do fleet_agent_start "$d" "role=gateway,site=plant-7" x86_64 4096; done
for d in "${BOX[@]}"; do fleet_agent_start "$d" "role=camera-box,site=plant-7" aarch64 1024; done
fleet_wait_online 60 "${ALL[@]}" || die "not every agent came online (logs in $FLEET_DIR/*/agent.log)"
run "$FL" devices list --token "$FLEET_RT"

# ------------------------------------------------------------------ trust
step "2. Keys: an offline root key, a release key, a root-signed keyring"
say "(done by fleet_trust; the same commands by hand:)"
say "flotilla key generate root.pem; flotilla key generate release.pem"
say "flotilla keyring create --version 1 --threshold 1 --key release.pub.pem:$MODEL -o keyring.json"
say "flotilla keyring sign keyring.json --key root.pem -o keyring.dsse.json"
run "$FL" keyring verify "$FLEET_DIR/trust/keyring.dsse.json" --root "$FLEET_DIR/keys/root.pub.pem" --threshold 1
say "every device holds root.pem and keyring.dsse.json in its trust directory"

# ------------------------------------------------------------------ helpers
W=$FLEET_DIR/work
mkdir -p "$W"
# manifest template: both classes, one acceptance test (EXTRA: more members of it)
template() { # OUT EXTRA
  local extra=${2:+,$2}
  cat >"$1" <<JSON
{"name":"$MODEL","version":"0","sequence":0,"created":"2026-01-01T00:00:00Z",
 "expires":"2027-01-01T00:00:00Z",
 "compatibility":{"arch":["x86_64","aarch64"],"accelerator":"none","backend":"gguf"},
 "acceptance":[{"name":"smoke","prompt":"Line 3 status:","max_tokens":4$extra}]}
JSON
}
bundle() { # VERSION SEQ FILE EXTRA
  template "$W/t-$1.json" "$4"
  run "$FL" bundle create -o "$W/$MODEL-$1.tar" --key "$FLEET_DIR/keys/release.pem" \
    --template "$W/t-$1.json" --name "$MODEL" --version "$1" --sequence "$2" "$3" ||
    die "bundle create $1"
}
# follow ID SECONDS: the rollout's progress until it is completed, halted,
# aborted or rolled back: `flotilla rollout status --watch` (one line per
# change when its output is not a terminal), bounded by SECONDS (--foreground:
# it stays in our process group, so Ctrl-C reaches it).
follow() {
  local id=$1 st
  timeout --foreground "$2" "$FL" rollout status "$id" --watch --interval 0.5 --token "$FLEET_RT" |
    sed -u 's/^/   /'
  # The CLI handles Ctrl-C itself (exit 130), so bash does not run our trap.
  [ "${PIPESTATUS[0]}" = 130 ] && { echo "interrupted"; FLEET_FAILED=interrupted; exit 130; }
  st=$(fleet_rollout_state "$id")
  case $st in
    completed|halted|aborted|rolled_back) echo "$st" >"$W/rollout-$id.state" ;;
    *) echo timeout >"$W/rollout-$id.state"; return 1 ;;
  esac
  "$FL" rollout status "$id" --token "$FLEET_RT" | sed -n '3,$s/^/   /p'
}
on_version() { # VERSION DEVICE...: how many of them the controller sees on VERSION
  local v=$1 d n=0; shift
  for d in "$@"; do [ "$(fleet_version "$d" "$MODEL")" = "$v" ] && n=$((n + 1)); done
  echo $n
}
versions() { # one line: device=version for all
  local d out=
  for d in "${ALL[@]}"; do out+="$d=$(fleet_version "$d" "$MODEL") "; done
  say "$out"
}
bytes_sent() { fleet_metric flotilla_chunk_bytes_sent_total; }
# create_rollout MODEL@VERSION ARGS...: prints the command, sets RID
create_rollout() {
  local out
  printf '$ flotilla rollout create %s\n' "$*"
  out=$("$FL" rollout create "$@" --json --token "$FLEET_OT" 2>&1) || die "rollout create: $out"
  RID=$(jq -r .id <<<"$out")
  say "rollout $RID created"
}

# ------------------------------------------------------------------ v1
step "3. Model v1: a tiny llama-architecture GGUF made by the project's writer"
run "$MKMODEL" --arch llama --vocab tiny --dim 128 --layers 8 --heads 4 --kv-heads 2 \
  --ffn 384 --ctx 256 --type q8_0 --seed 1 -o "$W/v1.gguf" >/dev/null || die "mkmodel"
SIZE=$(stat -c %s "$W/v1.gguf")
say "model v1: $SIZE bytes"
bundle 1.0.0 1 "$W/v1.gguf" ""
run "$FL" push "$W/$MODEL-1.0.0.tar" --token "$FLEET_OT" || die "push v1"

step "4. Roll v1 out in waves (25% -> 50% -> 100%, 2 s soak, failure gate 20%)"
b0=$(bytes_sent)
create_rollout "$MODEL@1.0.0" --waves 25,50,100 --soak 2 --max-failure-rate 0.2 \
  --min-sample 2 --max-concurrent 4
R1=$RID
follow "$R1" 90 || die "rollout $R1 did not finish in 90 s"
versions
V1_OK=$( [ "$(cat "$W/rollout-$R1.state")" = completed ] && [ "$(on_version 1.0.0 "${ALL[@]}")" = "$N" ] && echo OK || echo FAIL)
b1=$(bytes_sent)
say "v1: $((b1 - b0)) bytes sent to $N devices ($(( (b1 - b0) / N )) each, model $SIZE)"

# ------------------------------------------------------------------ v2
step "5. Fine-tuned v2: one layer of eight retrained; only its chunks move"
run "$FINETUNE" "$W/v1.gguf" "$W/v2.gguf" --layers 5 --seed 11 >/dev/null || die "finetune"
bundle 1.1.0 2 "$W/v2.gguf" ""
run "$FL" bundle diff "$W/$MODEL-1.0.0.tar" "$W/$MODEL-1.1.0.tar"
run "$FL" push "$W/$MODEL-1.1.0.tar" --token "$FLEET_OT" >/dev/null || die "push v2"
create_rollout "$MODEL@1.1.0" --waves 50,100 --soak 1 --max-failure-rate 0.2 \
  --min-sample 2 --max-concurrent 4
R2=$RID
follow "$R2" 90 || die "rollout $R2 did not finish in 90 s"
versions
V2_OK=$( [ "$(cat "$W/rollout-$R2.state")" = completed ] && [ "$(on_version 1.1.0 "${ALL[@]}")" = "$N" ] && echo OK || echo FAIL)
b2=$(bytes_sent)
MOVED=$(( (b2 - b1) / N ))
say "v2: $((b2 - b1)) bytes sent to $N devices: $MOVED per device for a $SIZE-byte model" \
    "($(( MOVED * 100 / SIZE ))%)"

# ------------------------------------------------------------------ v3
step "6. A broken v3: a release with a variant per class; the aarch64 one fails its acceptance test"
"$FINETUNE" "$W/v2.gguf" "$W/v3.gguf" --layers 2 --seed 13 >/dev/null || die "finetune v3"
"$FINETUNE" "$W/v2.gguf" "$W/v3-arm.gguf" --layers 2 --seed 14 >/dev/null || die "finetune v3"
bundle 1.2.0-x86 3 "$W/v3.gguf" ""
bundle 1.2.0-arm 4 "$W/v3-arm.gguf" '"memory_budget_mb":4'
say "(1.2.0-arm's acceptance test allows the runner 4 MiB of memory; it needs about 12)"
for v in 1.2.0-x86 1.2.0-arm; do
  "$FL" push "$W/$MODEL-$v.tar" --token "$FLEET_OT" >/dev/null || die "push $v"
done
run "$FL" release create "$MODEL@1.2.0" --variant 1.2.0-x86:arch=x86_64 \
  --variant 1.2.0-arm:arch=aarch64 --token "$FLEET_OT" || die "release create"
create_rollout "$MODEL@1.2.0" --release --waves 67,100 --soak 30 --max-failure-rate 0.25 \
  --min-sample 1 --revert-on-halt
R3=$RID
follow "$R3" 90 || die "rollout $R3 did not stop in 90 s"
V3=$(cat "$W/rollout-$R3.state")
# Boxes refuse 1.2.0-arm before switching (REJECTED): v2 keeps serving;
# gateways that took 1.2.0-x86 are sent a revert and go back to v2.
settled() { [ "$(on_version 1.1.0 "${ALL[@]}")" = "$N" ]; }
fleet_wait 30 settled
versions
ON_V2=$(on_version 1.1.0 "${ALL[@]}")
say "rollout $R3: $V3; $ON_V2 of $N devices run v2 (1.1.0)"
doc3=$(fleet_rollout "$R3")
say "v3 reached $(jq -r '.counts.attempted // 0' <<<"$doc3") of $N devices before the gate stopped it"
say "$(jq -r '.counts.variants["1.2.0-x86"].succeeded // 0' <<<"$doc3") gateway(s) had installed 1.2.0-x86:" \
    "revert_on_halt sent them back to 1.1.0"
for d in "${ALL[@]}"; do
  ev=$(fleet_device "$d" | jq -r '.models[]? | select(.install.version | startswith("1.2.0")) |
        "\(.install.version) \(.install.state) \(.install.error)"' 2>/dev/null)
  [ -n "$ev" ] && say "$d: $ev"
done

step "7. Refusals: a bundle signed by an unknown key, a tampered bundle, a replay"
"$FL" key generate "$W/rogue.pem" >/dev/null
"$FL" bundle create -o "$W/rogue.tar" --key "$W/rogue.pem" --name "$MODEL" --version 9.9.9 \
  --sequence 99 --arch x86_64,aarch64 "$W/v2.gguf" >/dev/null
run "$FL" push "$W/rogue.tar" --token "$FLEET_OT" && die "the controller took a rogue bundle"
say "devices never trust the controller: each verifies every bundle itself. A spare device"
say "(its own state and trust directories, offline install) refuses a tampered copy of v2"
say "and a replay of the older v1 once it runs v2:"
SP=$FLEET_DIR/spare
mkdir -p "$SP/trust" && cp "$FLEET_DIR/trust/"* "$SP/trust/"
spare() { "$FLEET_AGENT_BIN" --state-dir "$SP/state" --trust-dir "$SP/trust" "$@"; }
spare install "$W/$MODEL-1.1.0.tar" >/dev/null 2>&1 || die "spare device: install v2"
cp "$W/$MODEL-1.1.0.tar" "$W/tampered.tar"
printf 'X' | dd of="$W/tampered.tar" bs=1 seek=$(( $(stat -c %s "$W/tampered.tar") - 50000 )) \
  conv=notrunc status=none
REFUSED=0
printf '$ flotilla-agent install tampered.tar\n'
spare install "$W/tampered.tar" 2>&1 | sed 's/^/   /' && die "tampered bundle installed"
[ "${PIPESTATUS[0]}" != 0 ] && REFUSED=$((REFUSED + 1))
printf '$ flotilla-agent install %s\n' "$MODEL-1.0.0.tar"
spare install "$W/$MODEL-1.0.0.tar" 2>&1 | sed 's/^/   /'
[ "${PIPESTATUS[0]}" != 0 ] && REFUSED=$((REFUSED + 1))
[ "$(spare status --json | jq -r --arg m "$MODEL" '.models[$m] as $x | $x.slots[$x.current].version')" = 1.1.0 ] ||
  die "the spare device does not run v2 any more"
say "refused: $REFUSED of 2; the spare device still runs 1.1.0"

# ------------------------------------------------------------------ API
step "8. Ask ${GW[0]} a question through its local OpenAI-compatible API"
API=http://127.0.0.1:${FLEET_AGENT_PORT[${GW[0]}]}
printf '$ curl -s %s/v1/completions -d %s\n' "$API" \
  "'{\"prompt\": \"The factory line reported\", \"max_tokens\": 12}'"
ans=$(curl -s -m 30 -H 'Content-Type: application/json' \
  -d '{"prompt": "The factory line reported", "max_tokens": 12}' "$API/v1/completions")
jq -c '{model, choices: [.choices[0] | {text, finish_reason}], usage}' <<<"$ans" 2>/dev/null || echo "$ans"
TEXT=$(jq -r '.choices[0].text // empty' <<<"$ans" 2>/dev/null | tr -cd '[:print:]')
ANSWER=$([ -n "$TEXT" ] && echo yes || echo no)
say "answer: '$TEXT' (model $(jq -r '.model // "?"' <<<"$ans" 2>/dev/null); a random tiny model: the words are noise, the plumbing is real)"

step "9. The dashboard"
say "dashboard: $FLEET_URL/   (read token: $FLEET_RT)"
say "API:       curl -H 'Authorization: Bearer $FLEET_RT' $FLEET_URL/api/v1/rollouts"
say "metrics:   $FLEET_URL/metrics"
OK=1
[ "$V1_OK" = OK ] && [ "$V2_OK" = OK ] && [ "$V3" = halted ] && [ "$ON_V2" = "$N" ] &&
  [ "$ANSWER" = yes ] && [ "$REFUSED" = 2 ] || { OK=0; FLEET_FAILED=1; }
[ "$KEEP" = 1 ] || step "Done: stopping everything the demo started"
echo "RESULT v1=$V1_OK v2=$V2_OK v3=$V3 devices_on_v2=$ON_V2/$N answer=$ANSWER refused=$REFUSED/2 moved=$MOVED size=$SIZE seconds=$((SECONDS - T0))"
if [ "$KEEP" = 1 ]; then
  step "The fleet keeps running (--keep-running)"
  if [ -z "${FLEET_KEEP:-}" ] && [ "$OK" = 1 ]; then
    say "files:     $FLEET_DIR (removed when the fleet stops)"
  else
    say "files:     $FLEET_DIR (kept when the fleet stops)"
  fi
  say "CLI:       export FLOTILLA_CONTROLLER=$FLEET_URL FLOTILLA_TOKEN=$FLEET_OT; flotilla rollout list"
  say "local API: $API/v1/completions"
  # The demo's own process waits: stopping it (Ctrl-C here, or the signal
  # below from anywhere) runs fleet_cleanup, which stops the fleet.
  say "stop:      kill $$   (or Ctrl-C here)"
  # A stop asked for is a normal end: exit with the demo's verdict, and
  # the directory goes unless the caller set FLEET_KEEP (or it failed).
  trap 'exit $((1 - OK))' INT TERM HUP
  while :; do
    sleep 3600 &
    # cleanup must not wait an hour for this sleep (kill PID reaches only us)
    FLEET_EXTRA_PIDS=("$!")
    wait $!
  done
fi
[ "$OK" = 1 ]
