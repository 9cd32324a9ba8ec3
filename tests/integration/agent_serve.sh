#!/usr/bin/env bash
# The agent serving its models: runner processes behind the local
# OpenAI-compatible API, a swap under steady load that drops nothing and
# never mixes models, and a trial that a crashing runner rolls back.
#
#   agent_serve.sh FLOTILLA AGENT MKMODEL FINETUNE
set -uo pipefail
FLOTILLA=$1 AGENT=$2 MKMODEL=$3 FINETUNE=$4
. "$(dirname "$0")/lib.sh"
for t in jq curl; do command -v $t >/dev/null || { echo "FAIL: $t not installed"; exit 1; }; done
mk_tmp agent_serve
svc=
cleanup() { [ -n "$svc" ] && kill "$svc" 2>/dev/null; wait 2>/dev/null; [ -n "${FL_KEEP_TMP:-}" ] || rm -rf "$tmp"; }
trap cleanup EXIT

mk_trust "$tmp" tiny
T=$tmp/trust S=$tmp/state
mk_model "$tmp/v1/model.gguf" 1
mkdir -p "$tmp/v2"
"$FINETUNE" "$tmp/v1/model.gguf" "$tmp/v2/model.gguf" --layers 1 --seed 9 --scale 0.05 >/dev/null
mk_bundle "$tmp/v1.tar" "$tmp/keys" tiny 1.0 1 "$tmp/v1/model.gguf"
mk_bundle "$tmp/v2.tar" "$tmp/keys" tiny 2.0 2 "$tmp/v2/model.gguf"
created=$(date -u +%Y-%m-%dT%H:%M:%SZ); expires=$(date -u -d '+30 days' +%Y-%m-%dT%H:%M:%SZ)
jq -n --arg c "$created" --arg e "$expires" '{name: "tiny", version: "3.0", sequence: 3, created: $c,
  expires: $e, compatibility: {backend: "gguf"}, trial: {window_s: 600, min_requests: 1}}' >"$tmp/t3.json"
"$FLOTILLA" bundle create --template "$tmp/t3.json" --key "$tmp/keys/release.pem" -o "$tmp/v3.tar" "$tmp/v1/model.gguf" >/dev/null

# What each version answers (greedy), straight from the engine, as a JSON
# string. The random test models emit arbitrary bytes; the API must send
# valid UTF-8 and replaces invalid sequences with U+FFFD (per byte), jq -R
# per sequence: compare with every U+FFFD removed on both sides.
NORM='gsub("\ufffd"; "")'
text_of() { jq -c ".choices[0].text | $NORM"; }
greedy() {
  local w
  w=$("$AGENT" run-model "$1" --prompt "Hello" -n 8 2>/dev/null && echo x) || return 1
  w=${w%x}; w=${w%$'\n'}
  printf '%s' "$w" | jq -Rs -c "$NORM"
}
want1=$(greedy "$tmp/v1/model.gguf")
want2=$(greedy "$tmp/v2/model.gguf")
check "the two versions answer differently (the mix check means something)" \
  bash -c "[ -n '$want1' ] && [ -n '$want2' ] && [ '$want1' != '$want2' ]"

mkdir -p "$S/spool"
for _ in 1 2 3 4 5; do # a random port may be taken: the agent says so and exits
  port=$(free_port)
  cat >"$tmp/agent.conf" <<EOC
[agent]
state_dir = $S
trust_dir = $T
[serve]
listen = 127.0.0.1:$port
token = s3cret
EOC
  "$AGENT" --config "$tmp/agent.conf" run 2>"$tmp/agent.log" &
  svc=$!
  for _ in $(seq 50); do grep -qs "local API on" "$tmp/agent.log" && break; kill -0 $svc 2>/dev/null || break; sleep 0.1; done
  grep -qs "local API on" "$tmp/agent.log" && break
  kill $svc 2>/dev/null; wait $svc 2>/dev/null; svc=
done
check "the agent is up with its API" grep -qs "local API on" "$tmp/agent.log"
api() { curl -s -m 20 -H "Authorization: Bearer s3cret" "$@"; }
spool() { cp "$1" "$S/spool/.$2.part" && mv "$S/spool/.$2.part" "$S/spool/$2"; }
wait_for() { # wait_for SECONDS COMMAND...
  local end=$((SECONDS + $1)); shift
  while [ $SECONDS -lt $end ]; do "$@" && return 0; sleep 0.2; done
  return 1
}
served_version() { api "http://127.0.0.1:$port/v1/status" | jq -r '.models.tiny.version // empty'; }

spool "$tmp/v1.tar" v1.tar
check "v1 is served after the spool install" wait_for 30 bash -c "[ \"\$(curl -s -m 5 -H 'Authorization: Bearer s3cret' http://127.0.0.1:$port/v1/status | jq -r '.models.tiny.version // empty')\" = 1.0 ]"
check "/v1/models lists the model" bash -c "curl -s -H 'Authorization: Bearer s3cret' http://127.0.0.1:$port/v1/models | jq -e '.data[0].id == \"tiny\"' >/dev/null"
body='{"model":"tiny","prompt":"Hello","max_tokens":8,"temperature":0}'
out=$(api -H 'Content-Type: application/json' -d "$body" "http://127.0.0.1:$port/v1/completions")
check "completion over TCP equals the engine's own greedy output" [ "$(text_of <<<"$out")" = "$want1" ]
check "usage counts the 8 generated tokens" [ "$(jq -r '.usage.completion_tokens' <<<"$out")" = 8 ]
code=$(curl -s -o /dev/null -w '%{http_code}' -d "$body" "http://127.0.0.1:$port/v1/completions")
check "no token on TCP: 401" [ "$code" = 401 ]
out=$(curl -s -m 20 --unix-socket "$S/api.sock" -d "$body" http://localhost/v1/completions)
check "the UNIX socket needs no token" [ "$(text_of <<<"$out")" = "$want1" ]
sse=$(api -N -d '{"messages":[{"role":"user","content":"Hi"}],"max_tokens":4,"stream":true}' "http://127.0.0.1:$port/v1/chat/completions")
check "streamed chat ends with [DONE]" grep -q '^data: \[DONE\]' <<<"$sse"
code=$(api -o /dev/null -w '%{http_code}' -d '{"prompt":' "http://127.0.0.1:$port/v1/completions")
check "malformed JSON: 400" [ "$code" = 400 ]

# Swap under load: a client keeps asking while v2 replaces v1.
load() {
  local i=0
  while [ ! -e "$tmp/stop" ] && [ $i -lt 2000 ]; do
    i=$((i + 1))
    r=$(api -w '\n%{http_code}' -d "$body" "http://127.0.0.1:$port/v1/completions")
    echo "$(tail -n1 <<<"$r") $(head -n -1 <<<"$r" | text_of 2>/dev/null)" >>"$tmp/load.txt"
  done
}
load &
loader=$!
sleep 1
spool "$tmp/v2.tar" v2.tar
check "v2 served after the swap" wait_for 60 bash -c "[ \"\$(curl -s -m 5 -H 'Authorization: Bearer s3cret' http://127.0.0.1:$port/v1/status | jq -r '.models.tiny.version // empty')\" = 2.0 ]"
sleep 1
touch "$tmp/stop"
wait $loader
n=$(wc -l <"$tmp/load.txt")
bad=$(grep -vc '^200 ' "$tmp/load.txt")
old=$(grep -cxF "200 $want1" "$tmp/load.txt")
new=$(grep -cxF "200 $want2" "$tmp/load.txt")
echo "swap under load: $n requests, $old answered by v1, $new by v2, $bad failed"
check "no request failed during the swap" [ "$bad" -eq 0 ]
check "every answer came from a whole model (v1 or v2)" [ $((old + new)) -eq "$n" ]
check "both models answered during the run" bash -c "[ $old -gt 0 ] && [ $new -gt 0 ]"

# A trial that crashes: v3 goes into TRIAL, its runner is killed three
# times, the trial fails and v2 serves again.
spool "$tmp/v3.tar" v3.tar
check "v3 served (in trial)" wait_for 60 bash -c "[ \"\$(curl -s -m 5 -H 'Authorization: Bearer s3cret' http://127.0.0.1:$port/v1/status | jq -r '.models.tiny.version // empty')\" = 3.0 ]"
# The API serves v3 as soon as the runner swap commits; the journal moves
# SWITCHING -> TRIAL right after, so the state is polled, not read once.
check "v3 is in TRIAL" wait_for 10 bash -c "[ \"\$(curl -s -m 5 -H 'Authorization: Bearer s3cret' http://127.0.0.1:$port/v1/status | jq -r .models.tiny.state)\" = TRIAL ]"
runner_pid() { api "http://127.0.0.1:$port/v1/status" | jq -r '.models.tiny.pid // 0'; }
for k in 1 2 3; do
  wait_for 10 bash -c "[ \"\$(curl -s -m 5 -H 'Authorization: Bearer s3cret' http://127.0.0.1:$port/v1/status | jq -r '.models.tiny.pid // 0')\" != 0 ]" || true
  pid=$(runner_pid)
  [ "$pid" -gt 0 ] && kill -9 "$pid"
  wait_for 10 bash -c "p=\$(curl -s -m 5 -H 'Authorization: Bearer s3cret' http://127.0.0.1:$port/v1/status | jq -r '.models.tiny.pid // 0'); [ \"\$p\" != $pid ] && [ \"\$p\" != 0 ] || [ \"\$(curl -s -m 5 -H 'Authorization: Bearer s3cret' http://127.0.0.1:$port/v1/status | jq -r .models.tiny.version)\" = 2.0 ]" || true
done
check "crash loop in trial rolled back to v2" wait_for 30 bash -c "[ \"\$(curl -s -m 5 -H 'Authorization: Bearer s3cret' http://127.0.0.1:$port/v1/status | jq -r '.models.tiny.version // empty')\" = 2.0 ]"
out=$(api -d "$body" "http://127.0.0.1:$port/v1/completions")
check "v2 answers again after the rollback" [ "$(text_of <<<"$out")" = "$want2" ]
kill -TERM "$svc"
wait "$svc"; rc=$?
svc=
check "service stops cleanly" [ $rc -eq 0 ]
check "trial failure journaled with its reason" bash -c "sqlite3 '$S/state.db' \"SELECT error FROM installs WHERE state=9\" | grep -q 'crash loop'"
finish
