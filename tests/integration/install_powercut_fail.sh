#!/usr/bin/env bash
# Power cuts while a FAILING new version is being installed (docs/install.md
# "Power cuts during a failed install"): rollback must leave the old model
# serving whatever moment the power goes.
#
#   install_powercut_fail.sh FLOTILLA AGENT MKMODEL
#
# a. v3 fails its acceptance test (expected text the model never writes):
#    record the failpoints its install passes on the way to REJECTED, cut
#    power at every (point, hit), recover with `check` and assert v1 is
#    current, byte-exact, `check` finds 0 problems, v1 generates what v1
#    generates, the inactive slot is empty, and a good install (v4) works.
# b. v2 crashes during its trial (the agent starts 3 times during one trial:
#    a crash loop, rolled back at the 3rd start): record the failpoints of
#    that start (TRIAL -> REVERTING -> ROLLED_BACK), cut at every (point,
#    hit), start the service again and assert it serves v1, answers a
#    completion, and the device is consistent.
set -uo pipefail
FLOTILLA=$1 AGENT=$2 MKMODEL=$3
. "$(dirname "$0")/lib.sh"
for t in jq curl sqlite3; do command -v $t >/dev/null || { echo "FAIL: $t not installed"; exit 1; }; done
mk_tmp install_powercut_fail
svc=
cleanup() { [ -n "$svc" ] && kill "$svc" 2>/dev/null; wait 2>/dev/null; [ -n "${FL_KEEP_TMP:-}" ] || rm -rf "$tmp"; }
trap cleanup EXIT

mk_trust "$tmp" tiny
T=$tmp/trust
mk_model "$tmp/v1/model.gguf" 1
mk_model "$tmp/v2/model.gguf" 2
echo '{"temperature": 0.1}' >"$tmp/v1/params.json"
echo '{"temperature": 0.2}' >"$tmp/v2/params.json"
created=$(date -u +%Y-%m-%dT%H:%M:%SZ); expires=$(date -u -d '+30 days' +%Y-%m-%dT%H:%M:%SZ)
# bundle OUT VERSION SEQ EXTRA_JSON: model v2's files, manifest + EXTRA.
bundle() {
  jq -n --arg v "$2" --argjson s "$3" --arg c "$created" --arg e "$expires" --argjson x "$4" \
    '{name: "tiny", version: $v, sequence: $s, created: $c, expires: $e,
      compatibility: {backend: "gguf"}, runtime: {context_length: 256, threads: 1}} + $x' >"$tmp/tmpl$3.json"
  "$FLOTILLA" bundle create --template "$tmp/tmpl$3.json" --key "$tmp/keys/release.pem" -o "$1" \
    "$tmp/v2/model.gguf" "$tmp/v2/params.json" >/dev/null
}
mk_bundle "$tmp/v1.tar" "$tmp/keys" tiny 1.0 1 "$tmp/v1/model.gguf" "$tmp/v1/params.json"
bundle "$tmp/v2t.tar" 2.0 2 '{"trial": {"window_s": 600, "min_requests": 1}}'
bundle "$tmp/v2l.tar" 2.0 2 '{"trial": {"window_s": 600, "min_requests": 5, "max_p95_latency_ms": 1}}'
bundle "$tmp/v3.tar" 3.0 3 '{"acceptance": [{"name": "answer", "prompt": "Hello", "expect": "no such output zzq", "max_tokens": 4}]}'
bundle "$tmp/v4.tar" 4.0 4 '{"acceptance": [{"name": "smoke", "prompt": "Hello", "max_tokens": 4}]}'

agent() { "$AGENT" --state-dir "$S" --trust-dir "$T" "$@"; }
ref1=$("$AGENT" run-model "$tmp/v1/model.gguf" --prompt Hello -n 4 -t 1 2>/dev/null)
ref2=$("$AGENT" run-model "$tmp/v2/model.gguf" --prompt Hello -n 4 -t 1 2>/dev/null)
check "v1 and v2 generate differently" bash -c "[ -n '$ref1' ] && [ '$ref1' != '$ref2' ]"

base=$tmp/base
S=$base
agent install "$tmp/v1.tar" >/dev/null 2>&1
check "baseline: v1 committed" [ "$(agent status --json | jq -r '.models.tiny.last_install.state')" = COMMITTED ]

# assert_old LABEL ENDSTATE: v1 is current and good after a failed install
# of a newer version; ENDSTATE is the journal state that install must end in.
# REJECTED leaves the inactive slot empty; ROLLED_BACK leaves the failed
# version there (ready, verified by `check`), to be cleared by the next
# install. Then a good install (v4) must still work.
assert_old() {
  local label=$1 want=$2 st cur inactive state ver gen out
  st=$(agent status --json 2>/dev/null) || { bad "$label: status failed"; return 1; }
  cur=$(jq -r '.models.tiny.current' <<<"$st")
  inactive=$(tr ab ba <<<"$cur")
  state=$(jq -r '.models.tiny.last_install.state' <<<"$st")
  ver=$(jq -r --arg c "$cur" '.models.tiny.slots[$c].version' <<<"$st")
  [ "$state" = "$want" ] || { bad "$label: last install $state, want $want"; return 1; }
  [ "$ver" = 1.0 ] || { bad "$label: current version '$ver', want 1.0"; return 1; }
  [ "$(jq -r --arg c "$cur" '.models.tiny.slots[$c].status' <<<"$st")" = ready ] ||
    { bad "$label: current slot '$cur' not recorded ready"; return 1; }
  cmp -s "$S/models/tiny/current/model.gguf" "$tmp/v1/model.gguf" &&
    cmp -s "$S/models/tiny/current/params.json" "$tmp/v1/params.json" ||
    { bad "$label: v1 bytes differ"; return 1; }
  out=$(agent check 2>&1)
  grep -q '^check: 0 problem' <<<"$out" || { bad "$label: check after recovery: $out"; return 1; }
  gen=$("$AGENT" run-model "$S/models/tiny/current" --prompt Hello -n 4 -t 1 2>/dev/null) ||
    { bad "$label: run-model on the current slot failed"; return 1; }
  [ "$gen" = "$ref1" ] || { bad "$label: current slot generates '$gen', v1 generates '$ref1'"; return 1; }
  case "$want" in
    REJECTED)
      [ -z "$(ls -A "$S/models/tiny/$inactive" 2>/dev/null)" ] ||
        { bad "$label: inactive slot $inactive not empty: $(ls -A "$S/models/tiny/$inactive")"; return 1; }
      [ "$(jq -r --arg s "$inactive" '.models.tiny.slots[$s].status' <<<"$st")" = empty ] ||
        { bad "$label: inactive slot $inactive not recorded empty"; return 1; } ;;
    ROLLED_BACK)
      cmp -s "$S/models/tiny/$inactive/model.gguf" "$tmp/v2/model.gguf" ||
        { bad "$label: rolled-back slot $inactive does not hold v2 whole"; return 1; } ;;
  esac
  agent install "$tmp/v4.tar" >/dev/null 2>&1 || { bad "$label: good install v4 afterwards failed"; return 1; }
  st=$(agent status --json 2>/dev/null)
  cur=$(jq -r '.models.tiny.current' <<<"$st")
  [ "$(jq -r --arg c "$cur" '.models.tiny.slots[$c].version' <<<"$st")" = 4.0 ] &&
    cmp -s "$S/models/tiny/current/model.gguf" "$tmp/v2/model.gguf" ||
    { bad "$label: v4 install after recovery did not end on v4"; return 1; }
  ok "$label -> v1 serving ($want), then v4 installed"
}

# a. A version that fails its acceptance test.
S=$tmp/trace-a
cp -a "$base" "$S"
FLOTILLA_FAILPOINT_TRACE=$tmp/trace-a.txt agent install "$tmp/v3.tar" >"$tmp/a.out" 2>&1
check "v3 (bad acceptance test) refused with exit 1" [ $? -eq 1 ]
check "refusal names the acceptance failure" grep -q "acceptance test failed" "$tmp/a.out"
assert_old "uncut v3 install" REJECTED
points_a=$(sort "$tmp/trace-a.txt" | uniq -c | awk '{print $2 ":" $1}')
n_points_a=$(wc -l <<<"$points_a")
runs_a=0
for pc in $points_a; do
  p=${pc%%:*} count=${pc##*:}
  for k in $(seq 1 "$count"); do
    S=$tmp/run-a
    rm -rf "$S"
    cp -a "$base" "$S"
    FLOTILLA_FAILPOINTS="$p=$k*exit" agent install "$tmp/v3.tar" >/dev/null 2>&1
    rc=$?
    [ $rc -eq 86 ] || { bad "v3 cut at $p#$k: expected exit 86, got $rc"; continue; }
    agent check >/dev/null 2>&1 || { bad "v3 cut at $p#$k: check failed"; continue; }
    assert_old "v3 cut at $p#$k" REJECTED && runs_a=$((runs_a + 1))
  done
done
echo "failed acceptance test: $n_points_a failpoints, $runs_a runs:"
echo "$points_a" | tr '\n' ' '; echo
check "at least 10 distinct failpoints on the REJECTED path" [ "$n_points_a" -ge 10 ]
check "every (point, hit) recovered to v1" [ "$runs_a" -eq "$(awk -F: '{s += $2} END {print s}' <<<"$points_a")" ]

# b. A version whose trial fails by a crash loop of the agent.
port=
svc_conf() {
  port=$(free_port)
  printf '[agent]\nstate_dir = %s\ntrust_dir = %s\n[serve]\nlisten = 127.0.0.1:%s\n' "$S" "$T" \
    "$port" >"$tmp/svc.conf"
}
served() { curl -s -m 2 "http://127.0.0.1:$port/v1/status" | jq -r '.models.tiny.version // empty' 2>/dev/null; }
# svc_up: start the service, wait until it serves; its version in $v.
svc_up() {
  local _
  v=
  svc_conf
  "$AGENT" --config "$tmp/svc.conf" run 2>>"$tmp/svc.log" &
  svc=$!
  for _ in $(seq 1 100); do
    v=$(served); [ -n "$v" ] && break
    kill -0 "$svc" 2>/dev/null || break
    sleep 0.1
  done
}
svc_down() { kill -TERM "$svc" 2>/dev/null; wait "$svc"; local rc=$?; svc=; return $rc; }

# The trial device: v1 committed, v2 switched in and in TRIAL, the agent
# started twice during the trial (2 of the 3 starts of a crash loop).
tbase=$tmp/tbase
S=$tbase
cp -a "$base" "$S"
agent install "$tmp/v2t.tar" >/dev/null 2>&1
check "v2 with a trial window is installed into TRIAL" [ "$(agent status --json | jq -r '.models.tiny.last_install.state')" = TRIAL ]
for i in 1 2; do
  svc_up
  check "trial start $i serves v2" [ "$v" = 2.0 ]
  svc_down
done
# The 3rd start reverts; record its failpoints (the start itself, the revert
# and serving v1), stopping once v1 is served.
S=$tmp/trace-b
rm -rf "$S"; cp -a "$tbase" "$S"
export FLOTILLA_FAILPOINT_TRACE=$tmp/trace-b.txt
svc_up
unset FLOTILLA_FAILPOINT_TRACE
svc_down
check "3rd start during the trial rolls back and serves v1" [ "$v" = 1.0 ]
assert_old "uncut crash-loop rollback" ROLLED_BACK
check "rollback journaled as a crash loop" bash -c "sqlite3 '$S/state.db' \"SELECT error FROM installs WHERE version='2.0'\" | grep -q 'crash loop'"
points_b=$(sort "$tmp/trace-b.txt" | uniq -c | awk '{print $2 ":" $1}')
n_points_b=$(wc -l <<<"$points_b")
runs_b=0
for pc in $points_b; do
  p=${pc%%:*} count=${pc##*:}
  for k in $(seq 1 "$count"); do
    label="trial cut at $p#$k"
    S=$tmp/run-b
    rm -rf "$S"; cp -a "$tbase" "$S"
    svc_conf
    FLOTILLA_FAILPOINTS="$p=$k*exit" "$AGENT" --config "$tmp/svc.conf" run 2>>"$tmp/svc.log" &
    svc=$!
    for _ in $(seq 1 100); do kill -0 "$svc" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$svc" 2>/dev/null; then
      svc_down; bad "$label: the service did not reach the point within 10 s"; continue
    fi
    wait "$svc"; rc=$?; svc=
    [ $rc -eq 86 ] || { bad "$label: expected exit 86, got $rc"; continue; }
    svc_up
    code=$(curl -s -m 20 -o /dev/null -w '%{http_code}' \
      -d '{"prompt":"Hello","max_tokens":4,"temperature":0}' "http://127.0.0.1:$port/v1/completions")
    svc_down; rc=$?
    [ "$v" = 1.0 ] && [ "$code" = 200 ] ||
      { bad "$label: restarted service serves '$v', completion HTTP $code"; tail -n 20 "$tmp/svc.log"; continue; }
    [ $rc -eq 0 ] || { bad "$label: service exit $rc"; continue; }
    assert_old "$label" ROLLED_BACK && runs_b=$((runs_b + 1))
  done
done
echo "crash loop in trial: $n_points_b failpoints, $runs_b runs:"
echo "$points_b" | tr '\n' ' '; echo
check "at least 5 distinct failpoints on the TRIAL -> ROLLED_BACK path" [ "$n_points_b" -ge 5 ]
check "every (point, hit) recovered to v1 serving" [ "$runs_b" -eq "$(awk -F: '{s += $2} END {print s}' <<<"$points_b")" ]

# c. A version whose trial fails the latency gate (p95 over 1 ms after 5
# requests of 64 tokens) inside the running service: the other revert path
# (agent_trial_tick). Cut at the first hit of every point it passes; the
# restarted service judges the trial again (or finishes the revert).
ask5() {
  local i
  for i in 1 2 3 4 5; do
    curl -s -m 20 -o /dev/null -d '{"prompt":"Hello","max_tokens":64,"temperature":0}' \
      "http://127.0.0.1:$port/v1/completions"
  done
}
# wait_v1: up to 15 s for the service to serve v1 (or to exit).
wait_v1() { local _; for _ in $(seq 1 150); do [ "$(served)" = 1.0 ] && return 0; kill -0 "$svc" 2>/dev/null || return 1; sleep 0.1; done; return 1; }
lbase=$tmp/lbase
S=$lbase
cp -a "$base" "$S"
agent install "$tmp/v2l.tar" >/dev/null 2>&1
check "v2 with a latency gate is installed into TRIAL" [ "$(agent status --json | jq -r '.models.tiny.last_install.state')" = TRIAL ]
S=$tmp/trace-c
rm -rf "$S"; cp -a "$lbase" "$S"
export FLOTILLA_FAILPOINT_TRACE=$tmp/trace-c.txt
svc_up
unset FLOTILLA_FAILPOINT_TRACE
check "trial service serves v2" [ "$v" = 2.0 ]
ask5
check "p95 over 1 ms rolls v2 back to v1 in the service" wait_v1
svc_down
assert_old "uncut latency rollback" ROLLED_BACK
check "rollback journaled with the latency figures" bash -c "sqlite3 '$S/state.db' \"SELECT error FROM installs WHERE version='2.0'\" | grep -q '^latency p95'"
points_c=$(sort -u "$tmp/trace-c.txt")
n_points_c=$(wc -l <<<"$points_c")
runs_c=0
for p in $points_c; do
  label="latency-gate cut at $p#1"
  S=$tmp/run-c
  rm -rf "$S"; cp -a "$lbase" "$S"
  export FLOTILLA_FAILPOINTS="$p=1*exit"
  svc_up
  unset FLOTILLA_FAILPOINTS
  [ "$v" = 2.0 ] || { bad "$label: service served '$v' before the gate"; svc_down; continue; }
  ask5
  for _ in $(seq 1 150); do kill -0 "$svc" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$svc" 2>/dev/null; then
    svc_down; bad "$label: the service did not reach the point within 15 s"; continue
  fi
  wait "$svc"; rc=$?; svc=
  [ $rc -eq 86 ] || { bad "$label: expected exit 86, got $rc"; continue; }
  svc_up
  [ "$v" = 2.0 ] && ask5 # still in TRIAL: the restarted runner is judged again
  wait_v1; code=$(curl -s -m 20 -o /dev/null -w '%{http_code}' \
    -d '{"prompt":"Hello","max_tokens":4,"temperature":0}' "http://127.0.0.1:$port/v1/completions")
  v=$(served)
  svc_down; rc=$?
  [ "$v" = 1.0 ] && [ "$code" = 200 ] ||
    { bad "$label: restarted service serves '$v', completion HTTP $code"; tail -n 20 "$tmp/svc.log"; continue; }
  [ $rc -eq 0 ] || { bad "$label: service exit $rc"; continue; }
  assert_old "$label" ROLLED_BACK && runs_c=$((runs_c + 1))
done
echo "latency gate in trial: $n_points_c failpoints, $runs_c runs:"
echo "$points_c" | tr '\n' ' '; echo
check "at least 5 distinct failpoints on the latency-gate rollback" [ "$n_points_c" -ge 5 ]
check "every point recovered to v1 serving" [ "$runs_c" -eq "$n_points_c" ]
finish
