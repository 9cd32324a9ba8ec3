#!/usr/bin/env bash
# The install trial's latency gate (docs/install.md "Trial"): a version whose
# p95 request latency during the trial is over the manifest's
# max_p95_latency_ms rolls back by itself, with the figures in the event and
# the log; one within its limit commits when the window has passed.
#
#   serve_trial_p95.sh FLOTILLA AGENT MKMODEL
set -uo pipefail
FLOTILLA=$1 AGENT=$2 MKMODEL=$3
. "$(dirname "$0")/lib.sh"
for t in jq curl sqlite3; do command -v $t >/dev/null || { echo "FAIL: $t not installed"; exit 1; }; done
mk_tmp serve_trial_p95
svc=
cleanup() { [ -n "$svc" ] && kill "$svc" 2>/dev/null; wait 2>/dev/null; [ -n "${FL_KEEP_TMP:-}" ] || rm -rf "$tmp"; }
trap cleanup EXIT
mk_trust "$tmp" tiny
T=$tmp/trust S=$tmp/state
mk_model "$tmp/m/model.gguf" 1
created=$(date -u +%Y-%m-%dT%H:%M:%SZ); expires=$(date -u -d '+30 days' +%Y-%m-%dT%H:%M:%SZ)
# bundle VERSION SEQ TRIAL
bundle() {
  jq -n --arg c "$created" --arg e "$expires" --arg v "$1" --argjson s "$2" --argjson t "$3" '{name: "tiny",
    version: $v, sequence: $s, created: $c, expires: $e, compatibility: {backend: "gguf"}} +
    (if $t == null then {} else {trial: $t} end)' >"$tmp/t$2.json"
  "$FLOTILLA" bundle create --template "$tmp/t$2.json" --key "$tmp/keys/release.pem" -o "$tmp/v$2.tar" "$tmp/m/model.gguf" >/dev/null
}
bundle 1.0 1 null
bundle 2.0 2 '{"window_s": 600, "min_requests": 5, "max_p95_latency_ms": 1}'
bundle 3.0 3 '{"window_s": 3, "min_requests": 5, "max_p95_latency_ms": 60000}'

port=$(free_port)
mkdir -p "$S/spool"
printf '[agent]\nstate_dir = %s\ntrust_dir = %s\n[serve]\nlisten = 127.0.0.1:%s\n' "$S" "$T" "$port" >"$tmp/agent.conf"
"$AGENT" --config "$tmp/agent.conf" run 2>"$tmp/agent.log" &
svc=$!
URL=http://127.0.0.1:$port
api() { curl -s -m 20 "$@"; }
spool() { cp "$1" "$S/spool/.$2.part" && touch -d '-1 min' "$S/spool/.$2.part" && mv "$S/spool/.$2.part" "$S/spool/$2"; }
field() { api "$URL/v1/status" | jq -r ".models.tiny.$1 // empty"; }
served() { [ "$(field version)" = "$1" ]; }
ask() { # ask N: N completions of 64 tokens (several ms each on any machine)
  local i ok=0
  for i in $(seq "$1"); do
    [ "$(api -o /dev/null -w '%{http_code}' -d '{"prompt":"Hello","max_tokens":64,"temperature":0}' "$URL/v1/completions")" = 200 ] && ok=$((ok + 1))
  done
  [ $ok -eq "$1" ]
}

spool "$tmp/v1.tar" v1.tar
check "v1 committed and served" wait_for 30 served 1.0
spool "$tmp/v2.tar" v2.tar
check "v2 served, in TRIAL" wait_for 30 bash -c "[ \"\$(curl -s -m 5 $URL/v1/status | jq -r '.models.tiny.version + \" \" + .models.tiny.state')\" = '2.0 TRIAL' ]"
check "5 requests answered during the trial" ask 5
check "p95 over 1 ms rolled v2 back to v1" wait_for 15 served 1.0
why=$(sqlite3 "$S/state.db" "SELECT error FROM installs WHERE version='2.0'")
echo "v2 install: $why"
check "the journal gives the figures" bash -c "grep -Eq '^latency p95 [0-9.]+ ms over [0-9]+ requests, limit 1 ms\$' <<<'$why'"
check "the trial_failed event gives them too" bash -c "sqlite3 '$S/state.db' \"SELECT detail FROM events WHERE kind='install.trial_failed'\" | grep -q 'latency p95 .* limit 1 ms'"
check "and the log" grep -q 'install.trial_failed tiny 2.0: latency p95' "$tmp/agent.log"
check "v2 ended ROLLED_BACK" [ "$(sqlite3 "$S/state.db" "SELECT state FROM installs WHERE version='2.0'")" = 9 ]
check "v1 answers again" ask 1

spool "$tmp/v3.tar" v3.tar
check "v3 served, in TRIAL" wait_for 30 served 3.0
check "5 requests during its trial" ask 5
check "v3 within its p95 limit commits after the window" wait_for 20 bash -c "[ \"\$(sqlite3 '$S/state.db' \"SELECT state FROM installs WHERE version='3.0'\")\" = 6 ]"
# (the event row may follow the state change by a moment)
check "the commit event gives the trial's figures" wait_for 10 bash -c "sqlite3 '$S/state.db' \"SELECT detail FROM events WHERE kind='install.committed'\" | grep 'trial window passed: 5 requests, 0 failed, 0 crashes, p95 .* ms (limit 60000 ms)' >/dev/null"
echo "commit events: $(sqlite3 "$S/state.db" "SELECT detail FROM events WHERE kind='install.committed'" | tr '\n' '|')"
kill -TERM "$svc"; wait "$svc"; rc=$?; svc=
check "service stops cleanly" [ $rc -eq 0 ]
finish
