#!/usr/bin/env bash
# The exec backend: llama.cpp's llama-server, supervised as the runner of a
# model (backend "exec", command from the manifest's runtime.exec), behind
# the agent's local API: its answers are llama-server's own, streaming
# works, a killed or hung server is restarted by the supervisor (crashes
# counted), and nothing is left running after the agent stops.
# The agent runs only programs of serve.exec_allow (docs/serving.md): an
# exec bundle is rejected at preflight without it or when its program is
# not listed (this part runs without llama-server too).
# The rest is skipped, visibly, without a llama-server build
# (bench/llamacpp-ref.sh builds one into ~/.cache/flotilla;
# FLOTILLA_LLAMA_SERVER overrides): exit 77 after the allow-list checks passed.
#
#   serve_exec.sh FLOTILLA AGENT MKMODEL
set -uo pipefail
FLOTILLA=$1 AGENT=$2 MKMODEL=$3
. "$(dirname "$0")/lib.sh"
LS=${FLOTILLA_LLAMA_SERVER:-$HOME/.cache/flotilla/llama.cpp-build/bin/llama-server}
for t in jq curl sqlite3; do command -v $t >/dev/null || { echo "FAIL: $t not installed"; exit 1; }; done
mk_tmp serve_exec
svc= ref=
cleanup() {
  [ -n "$svc" ] && kill "$svc" 2>/dev/null
  [ -n "$ref" ] && kill "$ref" 2>/dev/null
  wait 2>/dev/null; [ -n "${FL_KEEP_TMP:-}" ] || rm -rf "$tmp"
}
trap cleanup EXIT
mk_trust "$tmp" tiny
T=$tmp/trust S=$tmp/state
mk_model "$tmp/m/model.gguf" 1

# --- the allow-list (no llama-server needed): a bundle naming /bin/sleep
created=$(date -u +%Y-%m-%dT%H:%M:%SZ); expires=$(date -u -d '+30 days' +%Y-%m-%dT%H:%M:%SZ)
jq -n --arg c "$created" --arg e "$expires" '{name: "tiny", version: "0.9", sequence: 1,
  created: $c, expires: $e, compatibility: {backend: "exec"},
  runtime: {exec: {command: ["/bin/sleep", "1000"]}},
  acceptance: [{name: "answers", prompt: "Hello", max_tokens: 4}]}' >"$tmp/t0.json"
"$FLOTILLA" bundle create --template "$tmp/t0.json" --key "$tmp/keys/release.pem" -o "$tmp/v0.tar" "$tmp/m/model.gguf" >/dev/null
check "exec bundle naming /bin/sleep built" test -s "$tmp/v0.tar"
# install_refused ALLOW-LINE: run an agent with that [serve] line on a fresh
# state, spool v0, print the install's error once it is rejected.
install_refused() {
  rm -rf "$S"; mkdir -p "$S/spool"
  printf '[agent]\nstate_dir = %s\ntrust_dir = %s\n[serve]\nsocket = off\n%s\n' "$S" "$T" "$1" >"$tmp/agent0.conf"
  "$AGENT" --config "$tmp/agent0.conf" run 2>>"$tmp/agent0.log" &
  svc=$!
  cp "$tmp/v0.tar" "$S/spool/.v0.part" && touch -d '-1 min' "$S/spool/.v0.part" && mv "$S/spool/.v0.part" "$S/spool/v0.tar"
  local i err=
  for i in $(seq 1 150); do
    err=$(sqlite3 "$S/state.db" "SELECT error FROM installs WHERE version='0.9' AND state=7" 2>/dev/null)
    [ -n "$err" ] && break
    sleep 0.2
  done
  kill -TERM "$svc"; wait "$svc" 2>/dev/null; svc=
  echo "$err"
}
err=$(install_refused "")
echo "without serve.exec_allow: $err"
check "no serve.exec_allow: the exec bundle is rejected, saying why" \
  grep -q 'backend exec: /bin/sleep is not allowed on this device (serve.exec_allow is empty: exec backend disabled)' <<<"$err"
check "... and no /bin/sleep was started" bash -c "! pgrep -f '^/bin/sleep 1000$' >/dev/null"
err=$(install_refused "exec_allow = /usr/bin/llama-server, /bin/sleepy")
echo "another program allowed: $err"
check "a program not in serve.exec_allow: rejected" grep -q '/bin/sleep is not allowed on this device (not in serve.exec_allow)' <<<"$err"
printf '[agent]\nstate_dir = %s\ntrust_dir = %s\n[serve]\nexec_allow = bin/relative\n' "$S" "$T" >"$tmp/bad.conf"
out=$("$AGENT" --config "$tmp/bad.conf" status 2>&1); rc=$?
check "a relative path in serve.exec_allow is a config error" bash -c "[ $rc -ne 0 ] && grep -q 'serve.exec_allow must be absolute paths' <<<'$out'"
rm -rf "$S"

if [ ! -x "$LS" ]; then
  echo "SKIPPED (llama-server part): no llama-server at $LS (run bench/llamacpp-ref.sh, or set FLOTILLA_LLAMA_SERVER)"
  finish || exit 1
  exit 77 # ctest reports "Skipped" (SKIP_RETURN_CODE 77): the allow-list part passed
fi
# A random test model emits arbitrary bytes, which this llama-server refuses
# to return; a grammar (passed through runtime.exec.request) keeps it ASCII.
GRAMMAR='root ::= [a-z ]+'
created=$(date -u +%Y-%m-%dT%H:%M:%SZ); expires=$(date -u -d '+30 days' +%Y-%m-%dT%H:%M:%SZ)
jq -n --arg c "$created" --arg e "$expires" --arg ls "$LS" --arg g "$GRAMMAR" '{name: "tiny", version: "1.0",
  sequence: 1, created: $c, expires: $e, compatibility: {backend: "exec"},
  runtime: {exec: {command: [$ls, "-m", "{model}", "--host", "127.0.0.1", "--port", "{port}",
                             "-t", "1", "-c", "256", "-np", "1"],
                   ready_timeout_ms: 30000, request: {grammar: $g}}},
  acceptance: [{name: "answers", prompt: "Hello", max_tokens: 4, latency_budget_ms: 10000}]}' >"$tmp/t1.json"
"$FLOTILLA" bundle create --template "$tmp/t1.json" --key "$tmp/keys/release.pem" -o "$tmp/v1.tar" "$tmp/m/model.gguf" >/dev/null
check "exec bundle built" test -s "$tmp/v1.tar"

# llama-server's own answer, to compare the proxied one with
wait_for() { local end=$((SECONDS + $1)); shift; while [ $SECONDS -lt $end ]; do "$@" && return 0; sleep 0.2; done; return 1; }
for _ in 1 2 3 4 5; do # a random port may be taken: try another
  rport=$((20000 + RANDOM % 20000))
  "$LS" -m "$tmp/m/model.gguf" --host 127.0.0.1 --port "$rport" -t 1 -c 256 -np 1 >"$tmp/ref.log" 2>&1 &
  ref=$!
  wait_for 30 bash -c "curl -sf -o /dev/null http://127.0.0.1:$rport/health || ! kill -0 $ref 2>/dev/null"
  kill -0 "$ref" 2>/dev/null && break
  wait "$ref" 2>/dev/null; ref=
done
want=$(curl -s -m 20 -d "$(jq -nc --arg g "$GRAMMAR" '{prompt: "Hello", max_tokens: 8, temperature: 0, grammar: $g}')" \
  "http://127.0.0.1:$rport/v1/completions" | jq -r '.choices[0].text')
kill "$ref"; wait "$ref" 2>/dev/null; ref=
echo "llama-server itself: '$want'"
check "llama-server answers directly" [ -n "$want" ]

port=$((20000 + RANDOM % 20000))
mkdir -p "$S/spool"
printf '[agent]\nstate_dir = %s\ntrust_dir = %s\n[serve]\nlisten = 127.0.0.1:%s\nexec_allow = /bin/sleep, %s\n' "$S" "$T" "$port" "$LS" >"$tmp/agent.conf"
"$AGENT" --config "$tmp/agent.conf" run 2>"$tmp/agent.log" &
svc=$!
URL=http://127.0.0.1:$port
api() { curl -s -m 30 "$@"; }
field() { api "$URL/v1/status" | jq -r ".models.tiny.$1 // empty"; }
cp "$tmp/v1.tar" "$S/spool/.v1.part" && touch -d '-1 min' "$S/spool/.v1.part" && mv "$S/spool/.v1.part" "$S/spool/v1.tar"
check "the exec model passes acceptance and is served" wait_for 60 bash -c "[ \"\$(curl -s -m 5 $URL/v1/status | jq -r '.models.tiny.version // empty')\" = 1.0 ]"
check "its acceptance test ran through llama-server" grep -q "acceptance: test 1 answers passed" "$tmp/agent.log"
body='{"prompt":"Hello","max_tokens":8,"temperature":0}'
out=$(api -d "$body" "$URL/v1/completions")
echo "through the agent: $out"
check "the agent's answer is llama-server's" [ "$(jq -r '.choices[0].text' <<<"$out")" = "$want" ]
check "usage: 8 tokens, finish length" jq -e '.usage.completion_tokens == 8 and .choices[0].finish_reason == "length"' <<<"$out" >/dev/null
sse=$(api -N -d '{"prompt":"Hello","max_tokens":8,"temperature":0,"stream":true}' "$URL/v1/completions")
streamed=$(grep '^data: {' <<<"$sse" | sed 's/^data: //' | jq -rj '.choices[0].text')
check "streamed, the same text, then [DONE]" bash -c "[ '$streamed' = '$want' ] && grep -q '^data: \[DONE\]' <<<'$sse'"

runner=$(field pid)
server=$(pgrep -P "$runner" | head -n 1)
check "llama-server runs as the runner's child" [ -n "$server" ]
kill -9 "$server"
check "a killed server: the runner goes down and is restarted" wait_for 30 bash -c "p=\$(curl -s -m 5 $URL/v1/status | jq -r '.models.tiny.pid // 0'); [ \"\$p\" != 0 ] && [ \"\$p\" != $runner ] && [ \"\$(curl -s -m 5 $URL/v1/status | jq -r .models.tiny.runner)\" = ready ]"
check "the crash is counted" [ "$(field crashes)" = 1 ]
check "the log has the runner's exit and the tail of its stderr" grep -q "runner crashed (exit status 3;.*exited (signal 9); the runner goes down with it" "$tmp/agent.log"
out=$(api -d "$body" "$URL/v1/completions")
check "answers again after the restart" [ "$(jq -r '.choices[0].text' <<<"$out")" = "$want" ]

runner=$(field pid)
server=$(pgrep -P "$runner" | head -n 1)
kill -STOP "$server"
check "a hung server (SIGSTOP): health checks fail, restarted" wait_for 40 bash -c "p=\$(curl -s -m 5 $URL/v1/status | jq -r '.models.tiny.pid // 0'); [ \"\$p\" != 0 ] && [ \"\$p\" != $runner ] && [ \"\$(curl -s -m 5 $URL/v1/status | jq -r .models.tiny.runner)\" = ready ]"
check "both crashes counted" [ "$(field crashes)" = 2 ]
check "the stopped server was killed" bash -c "! kill -0 $server 2>/dev/null"
out=$(api -d "$body" "$URL/v1/completions")
check "answers after that too" [ "$(jq -r '.choices[0].text' <<<"$out")" = "$want" ]

last=$(pgrep -P "$(field pid)" | head -n 1)
kill -TERM "$svc"; wait "$svc"; rc=$?; svc=
check "service stops cleanly" [ $rc -eq 0 ]
check "no llama-server left behind" bash -c "! kill -0 $last 2>/dev/null"

# The installed version, the agent restarted with llama-server no longer
# allowed: its runner refuses to start the server (checked again there).
sed -i "s|^exec_allow = .*|exec_allow = /bin/sleep|" "$tmp/agent.conf"
"$AGENT" --config "$tmp/agent.conf" run 2>"$tmp/agent2.log" &
svc=$!
check "a runner refuses a program the list no longer names" \
  wait_for 30 grep -q "is not in the agent's serve.exec_allow" "$tmp/agent2.log"
check "... and no llama-server runs" bash -c "! pgrep -f '^$LS ' >/dev/null"
check "... so the model does not serve" bash -c "[ \"\$(curl -s -m 5 $URL/v1/status | jq -r '.models.tiny.runner // empty')\" != ready ]"
kill -TERM "$svc"; wait "$svc"; svc=
finish
