#!/usr/bin/env bash
# The exec backend: llama.cpp's llama-server, supervised as the runner of a
# model (backend "exec", command from the manifest's runtime.exec), behind
# the agent's local API: its answers are llama-server's own, streaming
# works, a killed or hung server is restarted by the supervisor (crashes
# counted), and nothing is left running after the agent stops.
# The agent runs only programs of serve.exec_allow (docs/serving.md): an
# exec bundle is rejected at preflight without it or when its program is
# not listed (this part runs without llama-server too). Also without
# llama-server, with a python3 fake server behind a symlink: a server that
# keeps dying is restarted with backoff into CRASH_LOOP (/v1/status, 503
# model_crash_loop for whole and streamed requests, a serve.crash_loop event
# with the counts), and the allow-list and permissions are checked again at
# every restart (link swapped, directory world-writable: load_failed, 503
# model_load_failed, serve.failed event, the swapped-in program never runs).
# The rest is skipped, visibly, without a llama-server build
# (bench/llamacpp-ref.sh builds one into ~/.cache/flotilla;
# FLOTILLA_LLAMA_SERVER overrides): exit 77 after the allow-list checks passed.
#
#   serve_exec.sh FLOTILLA AGENT MKMODEL
set -uo pipefail
FLOTILLA=$1 AGENT=$2 MKMODEL=$3
. "$(dirname "$0")/lib.sh"
LS=${FLOTILLA_LLAMA_SERVER:-$HOME/.cache/flotilla/llama.cpp-build/bin/llama-server}
for t in jq curl sqlite3 python3; do command -v $t >/dev/null || { echo "FAIL: $t not installed"; exit 1; }; done
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

# --- restarts (no llama-server needed): a python3 fake server as the
# program, started through a symlink; both the link and its target allowed.
# A server that keeps dying is restarted with backoff until CRASH_LOOP; the
# allow-list and permissions are checked again at every restart.
PY=/usr/bin/python3; [ -x "$PY" ] || PY=$(readlink -f "$(command -v python3)")
mkdir -p "$tmp/real" "$tmp/bin" "$tmp/evil"
chmod 755 "$tmp" "$tmp/real" "$tmp/bin" "$tmp/evil"
{ echo "#!$PY"; cat <<'PYEOF'
import json, os, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
arg = lambda k: sys.argv[sys.argv.index(k) + 1]
with open(arg("--log"), "a") as f:
    f.write(os.path.realpath(__file__) + "\n")
if os.path.exists(arg("--die-file")):
    sys.exit("fakesrv: told to die at once")
class H(BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def reply(self, code, body, ctype="application/json"):
        b = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)
    def do_GET(self):
        self.reply(200, '{"status":"ok"}')
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        ev = {"choices": [{"text": "fine", "finish_reason": "length"}],
              "usage": {"prompt_tokens": 1, "completion_tokens": 1}}
        self.reply(200, "data: %s\n\ndata: [DONE]\n\n" % json.dumps(ev), "text/event-stream")
HTTPServer(("127.0.0.1", int(arg("--port"))), H).serve_forever()
PYEOF
} >"$tmp/real/fakesrv"
chmod 755 "$tmp/real/fakesrv"
cp -p "$tmp/real/fakesrv" "$tmp/evil/fakesrv"
ln -s "$tmp/real/fakesrv" "$tmp/bin/fakesrv"
created=$(date -u +%Y-%m-%dT%H:%M:%SZ); expires=$(date -u -d '+30 days' +%Y-%m-%dT%H:%M:%SZ)
jq -n --arg c "$created" --arg e "$expires" --arg p "$tmp/bin/fakesrv" --arg d "$tmp/die" --arg l "$tmp/ran.log" \
  '{name: "tiny", version: "0.5", sequence: 1, created: $c, expires: $e, compatibility: {backend: "exec"},
  runtime: {exec: {command: [$p, "--port", "{port}", "--die-file", $d, "--log", $l], ready_timeout_ms: 10000}},
  acceptance: [{name: "answers", prompt: "Hello", max_tokens: 4, expect: "fine"}]}' >"$tmp/tf.json"
"$FLOTILLA" bundle create --template "$tmp/tf.json" --key "$tmp/keys/release.pem" -o "$tmp/vf.tar" "$tmp/m/model.gguf" >/dev/null
check "exec bundle with the fake server built" test -s "$tmp/vf.tar"
port=$(free_port)
URL=http://127.0.0.1:$port
api() { curl -s -m 30 "$@"; }
field() { api "$URL/v1/status" | jq -r ".models.tiny.$1 // empty"; }
runner_is() { [ "$(field runner)" = "$1" ]; }
served_ready() { [ "$(field version)" = 0.5 ] && runner_is ready; }
mkdir -p "$S/spool"
printf '[agent]\nstate_dir = %s\ntrust_dir = %s\n[serve]\nlisten = 127.0.0.1:%s\nexec_allow = %s, %s\n' \
  "$S" "$T" "$port" "$tmp/bin/fakesrv" "$tmp/real/fakesrv" >"$tmp/agentf.conf"
start_agent() { # LOG: an agent on $S, its API up
  "$AGENT" --config "$tmp/agentf.conf" run 2>"$tmp/$1" &
  svc=$!
  wait_for 20 curl -s -m 2 -o /dev/null "$URL/healthz"
}
stop_agent() { kill -TERM "$svc"; wait "$svc" 2>/dev/null; svc=; }
kill_server() { local s; s=$(pgrep -P "$(field pid)" | head -n 1); [ -n "$s" ] && kill -9 "$s"; }
body='{"prompt":"Hello","max_tokens":4}'
# post, post_stream: a completion, its HTTP status on the last line
post() { api -w '\n%{http_code}' -d "$body" "$URL/v1/completions"; }
post_stream() { api -w '\n%{http_code}' -d '{"prompt":"Hello","max_tokens":4,"stream":true}' "$URL/v1/completions"; }
start_agent agentf.log
cp "$tmp/vf.tar" "$S/spool/.vf.part" && touch -d '-1 min' "$S/spool/.vf.part" && mv "$S/spool/.vf.part" "$S/spool/vf.tar"
check "the fake-server model is served" wait_for 60 served_ready
check "it answers through the link" [ "$(api -d "$body" "$URL/v1/completions" | jq -r '.choices[0].text')" = fine ]
check "the program run is the link's real path" [ "$(tail -n 1 "$tmp/ran.log")" = "$tmp/real/fakesrv" ]

# crash loop: from now on the server exits as soon as it starts
touch "$tmp/die"
check "the server killed (and dying at every restart from now on)" kill_server
check "the runner reaches crash_loop" wait_for 40 runner_is crash_loop
st=$(api "$URL/v1/status" | jq -c .models.tiny)
echo "status: $st"
check "5 crashes, 5 starts (4 restarts), the last backoff 800 ms (100 ms doubled)" \
  jq -e '.crashes == 5 and .starts == 5 and .backoff_ms == 800 and .pid == 0' <<<"$st"
check "/v1/status says why" jq -e '.error | test("crash")' <<<"$st"
out=$(post)
echo "request in the crash loop: $out"
check "a request gets 503" [ "$(tail -n 1 <<<"$out")" = 503 ]
check "... in the OpenAI error shape, code model_crash_loop" \
  jq -e '.error.type == "server_error" and .error.code == "model_crash_loop" and (.error.message | test("crash loop"))' <<<"$(head -n -1 <<<"$out")"
out=$(post_stream)
check "a streaming request: the same 503, before any event" \
  bash -c '[ "$(tail -n 1 <<<"$1")" = 503 ] && head -n -1 <<<"$1" | jq -e ".error.code == \"model_crash_loop\"" >/dev/null' _ "$out"
ev=$(sqlite3 "$S/state.db" "SELECT json_extract(detail,'\$.reason') FROM events WHERE kind='serve.crash_loop'")
echo "event: $ev"
check "a serve.crash_loop event counts the crashes and the backoff" \
  grep -q '^crash loop: 5 crashes, the last of them within [0-9.]* s, 4 restarts with backoff (last delay 800 ms); not restarted$' <<<"$ev"
within=$(sed -n 's/.*within \([0-9.]*\) s.*/\1/p' <<<"$ev")
check "the restarts were spaced by the backoff (100+200+400+800 ms)" awk -v w="$within" 'BEGIN { exit !(w >= 1.5) }'
check "the runner's words reach the log" grep -q "exited while starting" "$tmp/agentf.log"
check "the server was started at each runner start" [ "$(grep -c . "$tmp/ran.log")" -ge 6 ]
sleep 2
check "the crash loop is not left by itself" runner_is crash_loop
stop_agent

# the allow-list at a restart: the link swapped to a program not allowed
rm -f "$tmp/die"
start_agent agentf2.log
check "restarted agent: served again" wait_for 30 runner_is ready
ln -sfn "$tmp/evil/fakesrv" "$tmp/bin/fakesrv"
check "link swapped, server killed" kill_server
check "the restart is refused: load_failed" wait_for 30 runner_is load_failed
check "... the swapped-in program never ran" bash -c "! grep -q evil '$tmp/ran.log'"
check "... the log says why" grep -q "now resolves to $tmp/evil/fakesrv, which is not in the agent's serve.exec_allow: not started" "$tmp/agentf2.log"
ev=$(sqlite3 "$S/state.db" "SELECT json_extract(detail,'\$.reason') FROM events WHERE kind='serve.failed'")
echo "event: $ev"
check "... a serve.failed event too" grep -q "did not load: exec: $tmp/bin/fakesrv now resolves to $tmp/evil/fakesrv" <<<"$ev"
out=$(post)
check "... requests: 503 model_load_failed" \
  bash -c '[ "$(tail -n 1 <<<"$1")" = 503 ] && head -n -1 <<<"$1" | jq -e ".error.code == \"model_load_failed\"" >/dev/null' _ "$out"
stop_agent

# permissions at a restart: the program's directory made writable by everyone
ln -sfn "$tmp/real/fakesrv" "$tmp/bin/fakesrv"
start_agent agentf3.log
check "link restored, agent restarted: served again" wait_for 30 runner_is ready
chmod o+w "$tmp/real"
check "directory opened, server killed" kill_server
check "the restart is refused: load_failed" wait_for 30 runner_is load_failed
check "... the log says why" grep -q "directory $tmp/real of $tmp/real/fakesrv is writable by everyone: not started" "$tmp/agentf3.log"
stop_agent
chmod o-w "$tmp/real"
no_fake() { ! pgrep -f "^$PY $tmp/.*/fakesrv" >/dev/null; }
check "no fake server left behind" no_fake
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
for _ in 1 2 3 4 5; do # a random port may be taken: try another
  rport=$(free_port)
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

port=$(free_port)
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
