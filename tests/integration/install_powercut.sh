#!/usr/bin/env bash
# Power-loss safety of the install engine (docs/install.md).
#
#   install_powercut.sh FLOTILLA AGENT MKMODEL
#
# 1. Record every failpoint an install of v2 over v1 passes through (and how
#    often each is hit), then for every (point, hit) cut power there: the
#    agent _exit()s at once, as a power cut would stop it. Restart (`check`)
#    and assert: no install pending, the current slot holds v1 or v2 exactly
#    (byte-compare with the source model), the model loads (`check` hashes
#    and the runtime's GGUF reader), the journal and the slots agree, and a
#    new install of v2 then succeeds.
# 2. kill -9 at random moments of repeated installs: check repairs, a second
#    check reports 0 problems, the current slot is byte-exact and generates.
# 3. A failing new version (a payload that does not load) is rejected and
#    the old one keeps serving. Power cuts during failing versions (bad
#    acceptance test, crash during the trial): install_powercut_fail.sh.
set -uo pipefail
FLOTILLA=$1 AGENT=$2 MKMODEL=$3
. "$(dirname "$0")/lib.sh"
command -v jq >/dev/null || { echo "FAIL: jq not installed"; exit 1; }
mk_tmp install_powercut

mk_trust "$tmp" tiny
T=$tmp/trust
# Two payload files each, so a cut can fall between two renames.
mk_model "$tmp/v1/model.gguf" 1
mk_model "$tmp/v2/model.gguf" 2
echo '{"temperature": 0.1}' >"$tmp/v1/params.json"
echo '{"temperature": 0.2}' >"$tmp/v2/params.json"
mk_bundle "$tmp/v1.tar" "$tmp/keys" tiny 1.0 1 "$tmp/v1/model.gguf" "$tmp/v1/params.json"
mk_bundle "$tmp/v2.tar" "$tmp/keys" tiny 2.0 2 "$tmp/v2/model.gguf" "$tmp/v2/params.json"

agent() { "$AGENT" --state-dir "$S" --trust-dir "$T" "$@"; }
# What each version generates (greedy, so deterministic): the reference for
# "the model loads and answers" after a cut.
declare -A ref_out
for v in 1 2; do
  ref_out[$v]=$("$AGENT" run-model "$tmp/v$v/model.gguf" --prompt Hello -n 4 -t 1 2>/dev/null)
done
refs_differ() { [ -n "${ref_out[1]}" ] && [ "${ref_out[1]}" != "${ref_out[2]}" ]; }
check "v1 and v2 generate differently (so the generation check tells them apart)" refs_differ

# The baseline device: v1 installed and committed.
base=$tmp/base
S=$base
agent install "$tmp/v1.tar" >/dev/null 2>&1
check "baseline: v1 installed" [ "$(agent status --json | jq -r '.models.tiny.last_install.state')" = COMMITTED ]

# assert_sane LABEL: the device is in one of the two good end states.
assert_sane() {
  local label=$1 st cur ver state
  st=$(agent status --json 2>/dev/null) || { bad "$label: status failed"; return; }
  cur=$(jq -r '.models.tiny.current' <<<"$st")
  state=$(jq -r '.models.tiny.last_install.state' <<<"$st")
  ver=$(jq -r --arg c "$cur" '.models.tiny.slots[$c].version' <<<"$st")
  case "$state" in COMMITTED|REJECTED|ROLLED_BACK) ;; *) bad "$label: install left in $state"; return ;; esac
  if [ "$(jq -r --arg c "$cur" '.models.tiny.slots[$c].status' <<<"$st")" != ready ]; then
    bad "$label: current slot '$cur' not recorded ready"; return
  fi
  case "$ver" in
    1.0) cmp -s "$S/models/tiny/current/model.gguf" "$tmp/v1/model.gguf" || { bad "$label: v1 bytes differ"; return; } ;;
    2.0) cmp -s "$S/models/tiny/current/model.gguf" "$tmp/v2/model.gguf" || { bad "$label: v2 bytes differ"; return; } ;;
    *) bad "$label: current version '$ver'"; return ;;
  esac
  if ! agent check 2>/dev/null | grep -q '^check: 0 problem'; then
    bad "$label: second check still finds problems"; return
  fi
  # The device boots a working model: the runtime loads the current slot
  # and generates what that version generates.
  local gen
  gen=$("$AGENT" run-model "$S/models/tiny/current" --prompt Hello -n 4 -t 1 2>/dev/null) ||
    { bad "$label: run-model on the current slot failed"; return; }
  if [ "$gen" != "${ref_out[${ver%%.*}]}" ]; then
    bad "$label: current slot generates '$gen', v$ver generates '${ref_out[${ver%%.*}]}'"; return
  fi
  # The device can still update: installing v2 now ends with v2 committed.
  agent install "$tmp/v2.tar" >/dev/null 2>&1
  st=$(agent status --json 2>/dev/null)
  cur=$(jq -r '.models.tiny.current' <<<"$st")
  if [ "$(jq -r --arg c "$cur" '.models.tiny.slots[$c].version' <<<"$st")" != 2.0 ] ||
     ! cmp -s "$S/models/tiny/current/model.gguf" "$tmp/v2/model.gguf"; then
    bad "$label: v2 install after recovery did not end on v2"; return
  fi
  ok "$label -> ended on $ver, then updated to 2.0"
}

# 1. Every failpoint, every hit.
S=$tmp/trace
cp -a "$base" "$S"
FLOTILLA_FAILPOINT_TRACE=$tmp/trace.txt agent install "$tmp/v2.tar" >/dev/null 2>&1
check "trace run installs v2" [ "$(agent status --json | jq -r '.models.tiny.last_install.version')" = 2.0 ]
points=$(sort "$tmp/trace.txt" | uniq -c | awk '{print $2 ":" $1}')
n_points=$(wc -l <<<"$points")
runs=0
for pc in $points; do
  p=${pc%%:*} count=${pc##*:}
  for k in $(seq 1 "$count"); do
    S=$tmp/run
    rm -rf "$S"
    cp -a "$base" "$S"
    FLOTILLA_FAILPOINTS="$p=$k*exit" agent install "$tmp/v2.tar" >/dev/null 2>&1
    rc=$?
    if [ $rc -ne 86 ]; then
      bad "cut at $p#$k: expected exit 86, got $rc"
      continue
    fi
    agent check >/dev/null 2>&1 || { bad "cut at $p#$k: check failed"; continue; }
    assert_sane "cut at $p#$k"
    runs=$((runs + 1))
  done
done
# 1b. Recovery by the service: cut at the first hit of every point, then
# start `run` (the daemon, serving on a local port) instead of `check`. It
# must complete or undo the install by itself and answer a completion.
for t in curl; do command -v $t >/dev/null || { echo "FAIL: $t not installed"; exit 1; }; done
svc_runs=0
svc=
trap '[ -n "$svc" ] && kill "$svc" 2>/dev/null; rm -rf "$tmp"' EXIT
for pc in $points; do
  p=${pc%%:*}
  S=$tmp/svc
  rm -rf "$S"
  cp -a "$base" "$S"
  FLOTILLA_FAILPOINTS="$p=1*exit" agent install "$tmp/v2.tar" >/dev/null 2>&1
  rc=$?
  [ $rc -eq 86 ] || { bad "service recovery, cut at $p#1: expected exit 86, got $rc"; continue; }
  port=$(free_port)
  printf '[agent]\nstate_dir = %s\ntrust_dir = %s\n[serve]\nlisten = 127.0.0.1:%s\n' "$S" "$T" \
    "$port" >"$tmp/svc.conf"
  "$AGENT" --config "$tmp/svc.conf" run 2>"$tmp/svc.log" &
  svc=$!
  served=
  for _ in $(seq 1 100); do
    served=$(curl -s -m 2 "http://127.0.0.1:$port/v1/status" | jq -r '.models.tiny.version // empty' 2>/dev/null)
    [ -n "$served" ] && break
    kill -0 "$svc" 2>/dev/null || break
    sleep 0.1
  done
  # "Hi": v2's greedy answer starts with a NUL byte (docs/serving.md
  # "Generated bytes"; it once hung the local API).
  code=$(curl -s -m 20 -o /dev/null -w '%{http_code}' \
    -d '{"prompt":"Hi","max_tokens":4,"temperature":0}' "http://127.0.0.1:$port/v1/completions")
  kill -TERM "$svc" 2>/dev/null
  wait "$svc"
  rc=$?
  svc=
  if [ -z "$served" ] || [ "$code" != 200 ]; then
    bad "service recovery, cut at $p#1: served '$served', completion HTTP $code"; sed -n 1,20p "$tmp/svc.log"
    continue
  fi
  [ $rc -eq 0 ] || { bad "service recovery, cut at $p#1: service exit $rc"; continue; }
  st=$(agent status --json)
  pend=$(jq -r '.models.tiny.last_install.state' <<<"$st")
  case "$pend" in
    COMMITTED|REJECTED|ROLLED_BACK) ;;
    *) bad "service recovery, cut at $p#1: service left the install in $pend"; continue ;;
  esac
  ok "service recovery, cut at $p#1: $pend, served $served, completion answered"
  assert_sane "service recovery, cut at $p#1"
  svc_runs=$((svc_runs + 1))
done
check "service recovery ran for every failpoint ($svc_runs)" [ "$svc_runs" -eq "$n_points" ]

echo "power cuts: $n_points failpoints, $runs runs (check), $svc_runs runs (service):"
echo "$points" | tr '\n' ' '; echo
check "at least 15 distinct failpoints on the install path" [ "$n_points" -ge 15 ]

# 2. kill -9 at random moments over repeated installs.
S=$tmp/kill
rm -rf "$S"
cp -a "$base" "$S"
RANDOM=42
for i in $(seq 1 12); do
  bundle=$tmp/v2.tar
  [ $((i % 2)) -eq 0 ] && bundle=$tmp/v1.tar # v1 is refused once v2 committed: also fine
  "$AGENT" --state-dir "$S" --trust-dir "$T" install "$bundle" >/dev/null 2>&1 &
  pid=$!
  sleep "0.0$((RANDOM % 10))"
  kill -9 "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  agent check >/dev/null 2>&1 || bad "kill -9 #$i: check failed"
  # The first check repaired what the kill left; a second finds nothing.
  out=$(agent check 2>&1)
  grep -q '^check: 0 problem' <<<"$out" || bad "kill -9 #$i: second check: $out"
  st=$(agent status --json)
  state=$(jq -r '.models.tiny.last_install.state' <<<"$st")
  cur=$(jq -r '.models.tiny.current' <<<"$st")
  ver=$(jq -r --arg c "$cur" '.models.tiny.slots[$c].version' <<<"$st")
  case "$state:$ver" in
    COMMITTED:1.0|COMMITTED:2.0|REJECTED:1.0|REJECTED:2.0|ROLLED_BACK:*)
      f=$tmp/v${ver%%.*}/model.gguf
      if ! cmp -s "$S/models/tiny/current/model.gguf" "$f"; then bad "kill -9 #$i: bytes of $ver differ"
      elif [ "$("$AGENT" run-model "$S/models/tiny/current" --prompt Hello -n 4 -t 1 2>/dev/null)" != "${ref_out[${ver%%.*}]}" ]; then
        bad "kill -9 #$i: current slot does not generate what $ver generates"
      else ok "kill -9 #$i: $state, serving $ver, check clean, generates"; fi ;;
    *) bad "kill -9 #$i: state $state version $ver" ;;
  esac
done

# 3. A new version that fails its test leaves the old one serving.
S=$tmp/failing
cp -a "$base" "$S"
mkdir -p "$tmp/v3"
head -c 100000 /dev/urandom >"$tmp/v3/model.gguf"
mk_bundle "$tmp/v3.tar" "$tmp/keys" tiny 3.0 3 "$tmp/v3/model.gguf"
agent install "$tmp/v3.tar" >"$tmp/v3.out" 2>&1
check "broken v3 refused with exit 1" [ $? -eq 1 ]
check "refusal names the acceptance failure" grep -q "acceptance test failed" "$tmp/v3.out"
st=$(agent status --json)
check "v3 REJECTED in the journal" [ "$(jq -r '.models.tiny.last_install.state' <<<"$st")" = REJECTED ]
check "v1 still current and intact" cmp -s "$S/models/tiny/current/model.gguf" "$tmp/v1/model.gguf"
inactive=$(jq -r '.models.tiny.current' <<<"$st" | tr ab ba)
check "inactive slot emptied" [ -z "$(ls -A "$S/models/tiny/$inactive")" ]
check "rejection recorded as an event" [ "$(sqlite3 "$S/state.db" "SELECT COUNT(*) FROM events WHERE kind='install.rejected'")" -ge 1 ]

# 4. Out of disk midway: the write path fails after the first payload file
# is on disk (the failpoint after each extracted file's fsync, 2nd hit).
# The install is rejected, the inactive slot cleaned, v1 keeps serving, and
# an install.rejected event gives the reason.
S=$tmp/nospace
cp -a "$base" "$S"
FLOTILLA_FAILPOINTS="bundle.extract.file_synced=2*fail" agent install "$tmp/v2.tar" >"$tmp/ns.out" 2>&1
rc=$?
cat "$tmp/ns.out"
check "write failure midway: install refused (exit $rc)" [ $rc -eq 1 ]
st=$(agent status --json)
check "journal: v2 REJECTED" [ "$(jq -r '.models.tiny.last_install | .state + " " + .version' <<<"$st")" = "REJECTED 2.0" ]
check "journal error names the staging failure" \
  bash -c "sqlite3 '$S/state.db' \"SELECT error FROM installs WHERE version='2.0'\" | grep -q '^staging failed ('"
inactive=$(jq -r '.models.tiny.current' <<<"$st" | tr ab ba)
check "inactive slot emptied (no half-written file left)" [ -z "$(ls -A "$S/models/tiny/$inactive")" ]
check "inactive slot recorded empty" [ "$(jq -r --arg s "$inactive" '.models.tiny.slots[$s].status' <<<"$st")" = empty ]
check "v1 still current and intact" cmp -s "$S/models/tiny/current/model.gguf" "$tmp/v1/model.gguf"
check "v1 still generates" [ "$("$AGENT" run-model "$S/models/tiny/current" --prompt Hello -n 4 -t 1 2>/dev/null)" = "${ref_out[1]}" ]
reason=$(sqlite3 "$S/state.db" "SELECT json_extract(detail,'\$.reason') || ': ' || json_extract(detail,'\$.error') FROM events WHERE kind='install.rejected' AND json_extract(detail,'\$.version')='2.0'")
echo "event: $reason"
check "install.rejected event with the reason" grep -q '^staging failed: ' <<<"$reason"
check "check finds nothing to repair afterwards" bash -c "'$AGENT' --state-dir '$S' --trust-dir '$T' check 2>/dev/null | grep -q '^check: 0 problem'"
check "v2 installs once the disk is back" agent install "$tmp/v2.tar"

finish
