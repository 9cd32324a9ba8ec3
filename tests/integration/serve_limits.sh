#!/usr/bin/env bash
# The manifest's runner limits reach the runner through the agent (issue 6,
# "Runner limits from the manifest"): runtime.threads and
# runtime.context_length reach the backend, runtime.limits.memory_mb is the
# runner's RLIMIT_AS, and runtime.limits.request_timeout_ms ends a request
# that runs too long with 504 "timeout" in the OpenAI error shape, the
# runner killed and restarted (a crash counted), the next request answered,
# while another model (gguf) on the same agent keeps its runner and answers:
# a model's failure takes down its own runner only.
# (max_queue: serve_stop.sh and telemetry_events.sh.) The model is served by
# the exec backend around a python3 fake server that answers with the
# {threads} and {ctx} it was started with, and sleeps on the prompt "slow".
#
#   serve_limits.sh FLOTILLA AGENT MKMODEL
set -uo pipefail
FLOTILLA=$1 AGENT=$2 MKMODEL=$3
. "$(dirname "$0")/lib.sh"
for t in jq curl python3; do command -v $t >/dev/null || { echo "FAIL: $t not installed"; exit 1; }; done
mk_tmp serve_limits
svc=
cleanup() { [ -n "$svc" ] && kill "$svc" 2>/dev/null; wait 2>/dev/null; [ -n "${FL_KEEP_TMP:-}" ] || rm -rf "$tmp"; }
trap cleanup EXIT
mk_trust "$tmp" tiny other
T=$tmp/trust S=$tmp/state
mk_model "$tmp/m/model.gguf" 1
PY=/usr/bin/python3; [ -x "$PY" ] || PY=$(readlink -f "$(command -v python3)")
chmod 755 "$tmp"
{ echo "#!$PY"; cat <<'PYEOF'
import json, sys, time
from http.server import BaseHTTPRequestHandler, HTTPServer
arg = lambda k: sys.argv[sys.argv.index(k) + 1]
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
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if req.get("prompt") == "slow":
            time.sleep(10)
        text = "threads=%s ctx=%s" % (arg("--threads"), arg("--ctx"))
        ev = {"choices": [{"text": text, "finish_reason": "length"}],
              "usage": {"prompt_tokens": 1, "completion_tokens": 1}}
        self.reply(200, "data: %s\n\ndata: [DONE]\n\n" % json.dumps(ev), "text/event-stream")
HTTPServer(("127.0.0.1", int(arg("--port"))), H).serve_forever()
PYEOF
} >"$tmp/fakesrv"
chmod 755 "$tmp/fakesrv"
# An ASan build reserves terabytes of address space: no RLIMIT_AS there.
MEM=2048
if ldd "$AGENT" 2>/dev/null | grep libasan >/dev/null; then # not -q: pipefail + SIGPIPE
  MEM=0
  echo "SKIPPED (memory_mb checks): $AGENT is an AddressSanitizer build"
fi
created=$(date -u +%Y-%m-%dT%H:%M:%SZ); expires=$(date -u -d '+30 days' +%Y-%m-%dT%H:%M:%SZ)
jq -n --arg c "$created" --arg e "$expires" --arg p "$tmp/fakesrv" --argjson m "$MEM" '{name: "tiny", version: "1.0",
  sequence: 1, created: $c, expires: $e, compatibility: {backend: "exec"},
  runtime: {threads: 3, context_length: 200,
            limits: ({request_timeout_ms: 1500, max_queue: 4} + (if $m > 0 then {memory_mb: $m} else {} end)),
            exec: {command: [$p, "--port", "{port}", "--threads", "{threads}", "--ctx", "{ctx}"]}},
  acceptance: [{name: "answers", prompt: "Hello", max_tokens: 4}]}' >"$tmp/t1.json"
"$FLOTILLA" bundle create --template "$tmp/t1.json" --key "$tmp/keys/release.pem" -o "$tmp/v1.tar" "$tmp/m/model.gguf" >/dev/null
check "bundle with runner limits built" test -s "$tmp/v1.tar"
mk_model "$tmp/o/model.gguf" 2
mk_bundle "$tmp/other.tar" "$tmp/keys" other 1.0 1 "$tmp/o/model.gguf"
check "a second model (gguf) built" test -s "$tmp/other.tar"

port=$(free_port)
mkdir -p "$S/spool"
printf '[agent]\nstate_dir = %s\ntrust_dir = %s\n[serve]\nlisten = 127.0.0.1:%s\nexec_allow = %s\n' \
  "$S" "$T" "$port" "$tmp/fakesrv" >"$tmp/agent.conf"
"$AGENT" --config "$tmp/agent.conf" run 2>"$tmp/agent.log" &
svc=$!
URL=http://127.0.0.1:$port
api() { curl -s -m 20 "$@"; }
field() { api "$URL/v1/status" | jq -r ".models.tiny.$1 // empty"; }
served() { [ "$(field version)" = 1.0 ] && [ "$(field runner)" = ready ]; }
other_field() { api "$URL/v1/status" | jq -r ".models.other.$1 // empty"; }
other_served() { [ "$(other_field version)" = 1.0 ] && [ "$(other_field runner)" = ready ]; }
spool() { cp "$1" "$S/spool/.$2.part" && touch -d '-1 min' "$S/spool/.$2.part" && mv "$S/spool/.$2.part" "$S/spool/$2"; }
spool "$tmp/v1.tar" v1.tar
check "served" wait_for 60 served
spool "$tmp/other.tar" other.tar
check "the other model served beside it" wait_for 60 other_served
other_pid=$(other_field pid)
other_ask() { api -d '{"model":"other","prompt":"Hello","max_tokens":4,"temperature":0}' "$URL/v1/completions" | jq -r '.choices[0].text // empty'; }
other_want=$(other_ask)
check "it answers" [ -n "$other_want" ]
out=$(api -d '{"model":"tiny","prompt":"Hello","max_tokens":4}' "$URL/v1/completions")
echo "answer: $out"
check "runtime.threads and runtime.context_length reach the backend" [ "$(jq -r '.choices[0].text' <<<"$out")" = "threads=3 ctx=200" ]
runner=$(field pid)
args=$(tr '\0' ' ' <"/proc/$runner/cmdline")
echo "runner: $args"
server=$(pgrep -P "$runner" | head -n 1)
if [ "$MEM" -gt 0 ]; then
  check "the runner is started with them and the memory limit" grep -q -- '--threads 3 --ctx 200 --mem-bytes 2147483648' <<<"$args"
  check "runtime.limits.memory_mb is the runner's RLIMIT_AS" \
    grep -Eq '^Max address space +2147483648 +2147483648 +bytes' "/proc/$runner/limits"
  check "... and its server's (inherited)" grep -Eq '^Max address space +2147483648 ' "/proc/$server/limits"
else
  check "the runner is started with them" grep -q -- '--threads 3 --ctx 200 --mem-bytes 0' <<<"$args"
fi

t0=$(date +%s%N)
out=$(api -w '\n%{http_code}' -d '{"model":"tiny","prompt":"slow","max_tokens":4}' "$URL/v1/completions")
ms=$((($(date +%s%N) - t0) / 1000000))
echo "slow request after $ms ms: $out"
check "request_timeout_ms 1500: a request running longer gets 504" [ "$(tail -n 1 <<<"$out")" = 504 ]
check "... code timeout, OpenAI error shape" jq -e '.error.code == "timeout" and .error.type == "server_error" and (.error.message | length > 0)' <<<"$(head -n -1 <<<"$out")"
check "... after about 1.5 s, not the 10 s the server sleeps ($ms ms)" bash -c "[ $ms -ge 1400 ] && [ $ms -lt 8000 ]"
check "the runner was killed and restarted (a crash counted)" \
  wait_for 20 bash -c "[ \"\$(curl -s -m 5 $URL/v1/status | jq -r '.models.tiny | \"\(.crashes) \(.runner)\"')\" = '1 ready' ] && [ \"\$(curl -s -m 5 $URL/v1/status | jq -r .models.tiny.pid)\" != $runner ]"
# (its parent-death signal is asynchronous, and a zombie waiting for its
# new parent to reap it counts as gone)
check "the hung server went with it" \
  wait_for 10 bash -c "! kill -0 $server 2>/dev/null || [ \"\$(awk '{print \$3}' /proc/$server/stat 2>/dev/null)\" = Z ]"
check "the other model's runner is untouched" [ "$(other_field pid) $(other_field crashes) $(other_field runner)" = "$other_pid 0 ready" ]
check "... and it answers as before" [ "$(other_ask)" = "$other_want" ]
out=$(api -d '{"model":"tiny","prompt":"Hello","max_tokens":4}' "$URL/v1/completions")
check "the next request is answered" [ "$(jq -r '.choices[0].text' <<<"$out")" = "threads=3 ctx=200" ]
kill -TERM "$svc"; wait "$svc"; rc=$?; svc=
check "service stops cleanly" [ $rc -eq 0 ]
finish
