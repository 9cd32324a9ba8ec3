#!/usr/bin/env bash
# The install trial's error-rate gate (docs/install.md "Trial"): a version
# whose requests fail at more than the manifest's trial.max_error_rate rolls
# back by itself, with the figures in the journal, the event and the log.
# The failing requests are deterministic: the model is served by the exec
# backend (docs/serving.md) around a small python3 server that answers
# HTTP 500 to prompts containing "fail" (a model error, not the request's).
#
#   serve_trial_errors.sh FLOTILLA AGENT MKMODEL
set -uo pipefail
FLOTILLA=$1 AGENT=$2 MKMODEL=$3
. "$(dirname "$0")/lib.sh"
for t in jq curl sqlite3 python3; do command -v $t >/dev/null || { echo "FAIL: $t not installed"; exit 1; }; done
mk_tmp serve_trial_errors
svc=
cleanup() { [ -n "$svc" ] && kill "$svc" 2>/dev/null; wait 2>/dev/null; [ -n "${FL_KEEP_TMP:-}" ] || rm -rf "$tmp"; }
trap cleanup EXIT
mk_trust "$tmp" tiny
T=$tmp/trust S=$tmp/state
mk_model "$tmp/m/model.gguf" 1
PY=$(readlink -f "$(command -v python3)")

# The fake inference server: llama-server's /health and streamed
# /v1/completions, HTTP 500 when the prompt contains "fail".
cat >"$tmp/fake_server.py" <<'EOF'
import json, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
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
        if "fail" in req.get("prompt", ""):
            return self.reply(500, '{"error":{"message":"injected failure"}}')
        ev = {"choices": [{"text": "fine", "finish_reason": "length"}],
              "usage": {"prompt_tokens": 1, "completion_tokens": 1}}
        self.reply(200, "data: %s\n\ndata: [DONE]\n\n" % json.dumps(ev), "text/event-stream")
HTTPServer(("127.0.0.1", int(sys.argv[sys.argv.index("--port") + 1])), H).serve_forever()
EOF

created=$(date -u +%Y-%m-%dT%H:%M:%SZ); expires=$(date -u -d '+30 days' +%Y-%m-%dT%H:%M:%SZ)
# bundle VERSION SEQ TRIAL: an exec-backend bundle running the fake server
bundle() {
  jq -n --arg c "$created" --arg e "$expires" --arg v "$1" --argjson s "$2" --argjson t "$3" \
    --arg py "$PY" --arg srv "$tmp/fake_server.py" '{name: "tiny", version: $v, sequence: $s,
    created: $c, expires: $e, compatibility: {backend: "exec"},
    runtime: {exec: {command: [$py, $srv, "--model", "{model}", "--port", "{port}"]}},
    acceptance: [{name: "answers", prompt: "Hello", max_tokens: 4, expect: "fine"}]} +
    (if $t == null then {} else {trial: $t} end)' >"$tmp/t$2.json"
  "$FLOTILLA" bundle create --template "$tmp/t$2.json" --key "$tmp/keys/release.pem" -o "$tmp/v$2.tar" "$tmp/m/model.gguf" >/dev/null
}
bundle 1.0 1 null
bundle 2.0 2 '{"window_s": 600, "min_requests": 4, "max_error_rate": 0.2}'
bundle 3.0 3 '{"window_s": 2, "min_requests": 4, "max_error_rate": 0.3}'

port=$(free_port)
mkdir -p "$S/spool"
printf '[agent]\nstate_dir = %s\ntrust_dir = %s\n[serve]\nlisten = 127.0.0.1:%s\nexec_allow = %s\n' \
  "$S" "$T" "$port" "$PY" >"$tmp/agent.conf"
"$AGENT" --config "$tmp/agent.conf" run 2>"$tmp/agent.log" &
svc=$!
URL=http://127.0.0.1:$port
api() { curl -s -m 20 "$@"; }
spool() { cp "$1" "$S/spool/.$2.part" && touch -d '-1 min' "$S/spool/.$2.part" && mv "$S/spool/.$2.part" "$S/spool/$2"; }
field() { api "$URL/v1/status" | jq -r ".models.tiny.$1 // empty"; }
served() { [ "$(field version)" = "$1" ]; }
in_trial() { [ "$(field version) $(field state)" = "$1 TRIAL" ]; }
code_of() { api -o /dev/null -w '%{http_code}' -d "{\"prompt\":\"$1\",\"max_tokens\":4}" "$URL/v1/completions"; }
ask() { # ask N PROMPT EXPECTED_CODE: N completions, each answered with that HTTP code
  local i ok=0
  for i in $(seq "$1"); do [ "$(code_of "$2")" = "$3" ] && ok=$((ok + 1)); done
  [ $ok -eq "$1" ]
}

spool "$tmp/v1.tar" v1.tar
check "v1 (exec backend, fake server) committed and served" wait_for 30 served 1.0
check "v1 answers" ask 1 Hello 200
spool "$tmp/v2.tar" v2.tar
check "v2 served, in TRIAL" wait_for 30 in_trial 2.0
check "2 requests answered during the trial" ask 2 Hello 200
check "2 requests fail during the trial (HTTP 500: the model's error, not the request's)" ask 2 "please fail" 500

check "error rate 2/4 over 0.2 rolled v2 back to v1" wait_for 15 served 1.0
why=$(sqlite3 "$S/state.db" "SELECT error FROM installs WHERE version='2.0'")
echo "v2 install: $why"
check "the journal gives the figures" grep -Eq '^error rate 0\.500 over 4 requests, limit 0\.200$' <<<"$why"
check "the trial_failed event gives them too" bash -c "sqlite3 '$S/state.db' \"SELECT detail FROM events WHERE kind='install.trial_failed'\" | grep -q 'error rate 0.500 over 4 requests, limit 0.200'"
check "and the log" grep -q 'install.trial_failed tiny 2.0: error rate 0.500 over 4 requests' "$tmp/agent.log"
check "v2 ended ROLLED_BACK" [ "$(sqlite3 "$S/state.db" "SELECT state FROM installs WHERE version='2.0'")" = 9 ]
check "v1 answers again" ask 1 Hello 200

# Within the limit (1 of 4 failed, limit 0.3): commits after its window.
spool "$tmp/v3.tar" v3.tar
check "v3 served, in TRIAL" wait_for 30 in_trial 3.0
check "3 requests answered" ask 3 Hello 200
check "1 request fails" ask 1 "fail once" 500
check "v3 within its error-rate limit commits after the window" wait_for 20 bash -c "[ \"\$(sqlite3 '$S/state.db' \"SELECT state FROM installs WHERE version='3.0'\")\" = 6 ]"
check "the commit event counts the failed request" bash -c "sqlite3 '$S/state.db' \"SELECT detail FROM events WHERE kind='install.committed'\" | grep -q 'trial window passed: 4 requests, 1 failed, 0 crashes'"
kill -TERM "$svc"; wait "$svc"; rc=$?; svc=
check "service stops cleanly" [ $rc -eq 0 ]
finish
