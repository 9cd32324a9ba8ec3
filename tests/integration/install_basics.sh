#!/usr/bin/env bash
# Install engine behaviour other than power cuts: revert, anti-rollback,
# refusals that change nothing, `check` repairs, status output.
#
#   install_basics.sh FLOTILLA AGENT MKMODEL
set -uo pipefail
FLOTILLA=$1 AGENT=$2 MKMODEL=$3
. "$(dirname "$0")/lib.sh"
command -v jq >/dev/null || { echo "FAIL: jq not installed"; exit 1; }
mk_tmp install_basics

mk_trust "$tmp" tiny other
T=$tmp/trust
S=$tmp/state
agent() { "$AGENT" --state-dir "$S" --trust-dir "$T" "$@"; }
cur_version() { agent status --json | jq -r '.models.tiny as $m | $m.slots[$m.current].version'; }
snapshot() { # journal-visible state + slot contents
  { agent status --json | jq -S 'del(.models[].last_install)'; \
    find "$S/models" -type f -exec sha256sum {} + | sort; } 2>/dev/null
}

for v in 1 2; do mk_model "$tmp/v$v/model.gguf" $v; done
mk_bundle "$tmp/v1.tar" "$tmp/keys" tiny 1.0 1 "$tmp/v1/model.gguf"
mk_bundle "$tmp/v2.tar" "$tmp/keys" tiny 2.0 2 "$tmp/v2/model.gguf"

check "v1 installs" agent install "$tmp/v1.tar"
check "v2 installs" agent install "$tmp/v2.tar"
check "v2 current" [ "$(cur_version)" = 2.0 ]
check "status text shows both slots" bash -c "'$AGENT' --state-dir '$S' --trust-dir '$T' status | grep -q 'slot .\\*: ready 2.0'"

# Refusals that must change nothing.
before=$(snapshot)
refuse() { # refuse LABEL EXPECTED_TEXT BUNDLE
  local out
  out=$(agent install "$3" 2>&1)
  local rc=$?
  if [ $rc -eq 0 ]; then bad "$1: accepted"; return; fi
  if ! grep -q "$2" <<<"$out"; then bad "$1: message '$out' lacks '$2'"; return; fi
  if [ "$(snapshot)" != "$before" ]; then bad "$1: state changed"; return; fi
  ok "$1: refused ($2), nothing changed"
}
last_state() { agent status --json | jq -r .models.tiny.last_install.state; }
refuse "replayed v1 (sequence 1 < 2)" "replay" "$tmp/v1.tar"
cp "$tmp/v2.tar" "$tmp/flip.tar"
size=$(stat -c %s "$tmp/flip.tar")
printf '\xff' | dd of="$tmp/flip.tar" bs=1 seek=$((size - 20000)) conv=notrunc status=none
refuse "bit-flipped bundle" "hash mismatch" "$tmp/flip.tar"
head -c 3000 "$tmp/v2.tar" >"$tmp/trunc.tar"
refuse "truncated bundle" "archive" "$tmp/trunc.tar"
"$FLOTILLA" key generate "$tmp/rogue.pem" >/dev/null
"$FLOTILLA" bundle create -o "$tmp/rogue.tar" --key "$tmp/rogue.pem" --name tiny --version 9 \
  --sequence 9 "$tmp/v2/model.gguf" >/dev/null
refuse "bundle signed by an unknown key" "unknown key" "$tmp/rogue.tar"
mk_bundle "$tmp/undelegated.tar" "$tmp/keys" notlisted 1.0 1 "$tmp/v1/model.gguf"
refuse "model the key is not delegated for" "not delegated" "$tmp/undelegated.tar"
mk_bundle "$tmp/expired.tar" "$tmp/keys" tiny 3.0 3 --expires-days 0 "$tmp/v1/model.gguf" 2>/dev/null ||
  "$FLOTILLA" bundle create -o "$tmp/expired.tar" --key "$tmp/keys/release.pem" --name tiny \
    --version 3.0 --sequence 3 --expires-days 1 "$tmp/v1/model.gguf" >/dev/null
if "$FLOTILLA" bundle inspect "$tmp/expired.tar" --json | jq -e '.manifest.expires // .expires' >/dev/null 2>&1; then :; fi
other_arch=aarch64; [ "$(uname -m)" = aarch64 ] && other_arch=x86_64
mk_bundle "$tmp/arm.tar" "$tmp/keys" tiny 4.0 4 --arch "$other_arch" "$tmp/v1/model.gguf"
refuse "bundle for another architecture" "not compatible" "$tmp/arm.tar"
check "incompatible bundle journaled REJECTED" [ "$(last_state)" = REJECTED ]
mk_bundle "$tmp/bigram.tar" "$tmp/keys" tiny 4.0 4 --min-ram-mb 99999999 "$tmp/v1/model.gguf"
refuse "bundle needing more RAM than the device has" "not compatible" "$tmp/bigram.tar"
mk_bundle "$tmp/onnx.tar" "$tmp/keys" tiny 4.0 4 --backend onnx "$tmp/v1/model.gguf"
refuse "bundle for a backend the device lacks" "not compatible" "$tmp/onnx.tar"
check "incompatible refusals are journaled with the reason" \
  bash -c "sqlite3 '$S/state.db' \"SELECT error FROM installs WHERE state=7\" | grep -q 'not in the bundle.s list'"

# Several model names on one device are independent: a second model
# (`other`, v1 then v2) is untouched by reverting tiny, and vice versa.
mk_bundle "$tmp/o1.tar" "$tmp/keys" other 1.0 1 "$tmp/v2/model.gguf"
mk_bundle "$tmp/o2.tar" "$tmp/keys" other 2.0 2 "$tmp/v1/model.gguf"
check "second model v1 installs" agent install "$tmp/o1.tar"
check "second model v2 installs" agent install "$tmp/o2.tar"
model_view() { # model_view NAME: its journal record + its slot bytes
  agent status --json | jq -S --arg m "$1" '.models[$m]'
  (cd "$S/models/$1" && find . -type f -exec sha256sum {} + | sort; readlink current)
}
other_before=$(model_view other)
check "tiny still on v2 beside the second model" [ "$(cur_version)" = 2.0 ]

# Revert: always allowed to the slot this device committed before.
check "revert succeeds" agent revert tiny
check "v1 current after revert" [ "$(cur_version)" = 1.0 ]
check "reverting tiny left the other model's slots, current and journal alone" \
  [ "$(model_view other)" = "$other_before" ]
check "revert journaled ROLLED_BACK" [ "$(agent status --json | jq -r .models.tiny.last_install.state)" = ROLLED_BACK ]
check "floor stays at 2: v1 bundle still refused" bash -c "! '$AGENT' --state-dir '$S' --trust-dir '$T' install '$tmp/v1.tar' 2>/dev/null"
check "revert again goes forward to v2" agent revert tiny
check "v2 current again" [ "$(cur_version)" = 2.0 ]
tiny_before=$(model_view tiny)
check "revert of the other model succeeds" agent revert other
check "other model back on its v1" [ "$(agent status --json | jq -r '.models.other as $m | $m.slots[$m.current].version')" = 1.0 ]
check "other model's current holds its v1 bytes" cmp -s "$S/models/other/current/model.gguf" "$tmp/v2/model.gguf"
check "reverting the other model left tiny alone" [ "$(model_view tiny)" = "$tiny_before" ]
check "reinstalling the same sequence is allowed" agent install "$tmp/v2.tar"
check "no model: revert refused" bash -c "! '$AGENT' --state-dir '$S' --trust-dir '$T' revert nosuch 2>/dev/null"

# check: damaged inactive slot is cleared; damaged active slot is reverted.
st=$(agent status --json)
cur=$(jq -r .models.tiny.current <<<"$st")
ina=$(tr ab ba <<<"$cur")
printf 'X' | dd of="$S/models/tiny/$ina/model.gguf" bs=1 seek=100 conv=notrunc status=none
out=$(agent check 2>&1)
echo "$out"
check "check reports the damaged inactive slot" grep -q "check: 1 problem" <<<"$out"
check "damaged inactive slot emptied" [ -z "$(ls -A "$S/models/tiny/$ina")" ]
check "its journal record is empty" [ "$(agent status --json | jq -r --arg s "$ina" '.models.tiny.slots[$s].status')" = empty ]
check "revert with nothing to go back to is refused" bash -c "! '$AGENT' --state-dir '$S' --trust-dir '$T' revert tiny 2>/dev/null"
check "v1 installs again into the emptied slot" bash -c "'$AGENT' --state-dir '$S' --trust-dir '$T' install '$tmp/v2.tar' >/dev/null"
printf 'X' | dd of="$S/models/tiny/current/model.gguf" bs=1 seek=100 conv=notrunc status=none
agent check >/dev/null
check "damaged active slot: check reverted to the good one" cmp -s "$S/models/tiny/current/model.gguf" "$tmp/v2/model.gguf"
check "damage recorded as an event" [ "$(sqlite3 "$S/state.db" "SELECT COUNT(*) FROM events WHERE kind='check.damaged'")" -ge 2 ]

# Leftovers: a file dropped in the empty inactive slot is cleaned by check.
st=$(agent status --json)
ina=$(jq -r .models.tiny.current <<<"$st" | tr ab ba)
if [ "$(jq -r --arg s "$ina" '.models.tiny.slots[$s].status' <<<"$st")" = empty ]; then
  echo junk >"$S/models/tiny/$ina/stray"
  agent check >/dev/null
  check "stray file in an empty slot removed" [ ! -e "$S/models/tiny/$ina/stray" ]
fi

# Pre-flight free disk: a reserve no disk has -> refused (no_space) before
# anything is staged; journal, slots and the other records unchanged.
printf '[agent]\nstate_dir = %s\ntrust_dir = %s\ndisk_reserve = %s\n' "$S" "$T" \
  $((1 << 60)) >"$tmp/huge_reserve.conf"
mk_bundle "$tmp/v10.tar" "$tmp/keys" tiny 10.0 10 "$tmp/v1/model.gguf"
before=$(snapshot)
ls_before=$(ls -R "$S/models")
out=$("$AGENT" --config "$tmp/huge_reserve.conf" install "$tmp/v10.tar" 2>&1)
rc=$?
echo "$out" | tail -2
check "huge disk_reserve: install refused" [ $rc -ne 0 ]
check "the refusal says no disk space" grep -q "not enough disk space" <<<"$out"
check "slots and journal state unchanged" [ "$(snapshot)" = "$before" ]
check "no file appeared in any slot" [ "$(ls -R "$S/models")" = "$ls_before" ]
st=$(agent status --json)
check "journal: last install REJECTED for 10.0" \
  [ "$(jq -r '.models.tiny.last_install | .state + " " + .version' <<<"$st")" = "REJECTED 10.0" ]
check "journal error gives the figures" bash -c "sqlite3 '$S/state.db' \"SELECT error FROM installs WHERE version='10.0'\" | grep -Eq '^needs [0-9]+ bytes \\(\+$((1 << 60)) reserve\\), [0-9]+ available \\(not enough disk space\\)\$'"
code=$(sqlite3 "$S/state.db" "SELECT json_extract(detail,'\$.error') FROM events WHERE kind='install.rejected' AND json_extract(detail,'\$.version')='10.0'")
check "install.rejected event carries the no-space error ($code)" [ "$code" = "not enough disk space" ]
check "v10 still installs with the normal reserve" agent install "$tmp/v10.tar"

# Two agents never work on one state directory at once.
exec 9>"$S/agent.lock"
flock -n 9
check "a second agent is refused while the lock is held" bash -c "! '$AGENT' --state-dir '$S' --trust-dir '$T' check 2>/dev/null"
check "status (read-only) still works beside it" agent status
exec 9>&-

# No trust store: install refused clearly.
out=$("$AGENT" --state-dir "$tmp/s2" --trust-dir "$tmp/nowhere" install "$tmp/v1.tar" 2>&1)
check "no trust store: install refused" grep -q "unknown key" <<<"$out"

# Acceptance tests in the manifest run on the device before the switch.
created=$(date -u +%Y-%m-%dT%H:%M:%SZ)
expires=$(date -u -d '+30 days' +%Y-%m-%dT%H:%M:%SZ)
accept_bundle() { # accept_bundle OUT VERSION SEQ ACCEPTANCE_JSON
  jq -n --arg v "$2" --argjson s "$3" --arg c "$created" --arg e "$expires" --argjson a "$4" \
    '{name: "tiny", version: $v, sequence: $s, created: $c, expires: $e,
      compatibility: {backend: "gguf"}, runtime: {context_length: 256, threads: 1},
      acceptance: $a}' >"$tmp/tmpl.json"
  "$FLOTILLA" bundle create --template "$tmp/tmpl.json" --key "$tmp/keys/release.pem" -o "$1" "$tmp/v1/model.gguf" >/dev/null
}
out_of() { "$AGENT" run-model "$1" --prompt "$2" -n "$3" 2>/dev/null; }
greedy=$(out_of "$tmp/v1/model.gguf" "Hello" 8)
check "run-model is deterministic (greedy twice)" [ "$greedy" = "$(out_of "$tmp/v1/model.gguf" "Hello" 8)" ]
check "run-model prints timings" bash -c "'$AGENT' run-model '$tmp/v1/model.gguf' --prompt Hi -n 4 2>&1 >/dev/null | grep -q 'tok/s'"
S=$tmp/accept
accept_bundle "$tmp/a-good.tar" 5.0 5 '[{"name":"smoke","prompt":"Hello","max_tokens":8,"latency_budget_ms":60000,"memory_budget_mb":4096}]'
check "bundle whose acceptance tests pass installs" agent install "$tmp/a-good.tar"
accept_bundle "$tmp/a-expect.tar" 6.0 6 '[{"name":"answer","prompt":"Hello","expect":"no such output zzq","max_tokens":8}]'
out=$(agent install "$tmp/a-expect.tar" 2>&1)
check "wrong expected output: refused" grep -q "acceptance test failed" <<<"$out"
check "reason names the test and the expectation" bash -c "'$AGENT' --state-dir '$S' --trust-dir '$T' status | grep -q 'test 1 answer: output does not contain'"
accept_bundle "$tmp/a-slow.tar" 7.0 7 '[{"name":"fast","prompt":"Hello","max_tokens":250,"latency_budget_ms":1}]'
out=$(agent install "$tmp/a-slow.tar" 2>&1)
check "latency over budget: refused" bash -c "'$AGENT' --state-dir '$S' --trust-dir '$T' status | grep -q 'budget 1 ms'"
accept_bundle "$tmp/a-mem.tar" 8.0 8 '[{"name":"small","prompt":"Hello","max_tokens":4,"memory_budget_mb":1}]'
out=$(agent install "$tmp/a-mem.tar" 2>&1)
check "memory over budget (the runner's peak RSS): refused" bash -c "'$AGENT' --state-dir '$S' --trust-dir '$T' status | grep -q 'peak RSS [0-9]* MiB, budget 1 MiB'"
check "good version still current" [ "$(cur_version)" = 5.0 ]

# The service: bundles dropped into the spool directory get installed.
S=$tmp/svc
mkdir -p "$S/spool"
"$AGENT" --state-dir "$S" --trust-dir "$T" run 2>"$tmp/svc.log" &
svc=$!
trap 'kill $svc 2>/dev/null; rm -rf "$tmp"' EXIT
cp "$tmp/v1.tar" "$S/spool/.v1.tar.part" && mv "$S/spool/.v1.tar.part" "$S/spool/v1.tar"
cp "$tmp/flip.tar" "$S/spool/flip.tar"
for _ in $(seq 1 100); do
  [ -e "$S/spool/installed/v1.tar" ] && [ -e "$S/spool/rejected/flip.tar" ] && break
  sleep 0.2
done
check "service installed the spooled bundle" [ -e "$S/spool/installed/v1.tar" ]
check "service refused the tampered one" [ -e "$S/spool/rejected/flip.tar" ]
check "spooled v1 is current" [ "$(cur_version)" = 1.0 ]
kill -TERM $svc
for _ in $(seq 1 50); do kill -0 $svc 2>/dev/null || break; sleep 0.1; done
wait $svc
check "service stops cleanly on SIGTERM" [ $? -eq 0 ]

finish
