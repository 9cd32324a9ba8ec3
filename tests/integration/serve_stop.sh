#!/usr/bin/env bash
# Graceful stop while a streamed completion is in flight: SIGTERM to the
# agent stops new requests, lets the stream end the way every stream ends
# (a finish_reason chunk, then `data: [DONE]`), and the agent exits 0
# (docs/operations-packaging.md "Graceful stop"). The bundle's runtime.limits.max_queue = 1
# reaches the runner: a second request during the stream gets 503
# "overloaded" at once; max_queue = 0 is refused by bundle create.
#
#   serve_stop.sh FLOTILLA AGENT MKMODEL
set -uo pipefail
FLOTILLA=$1 AGENT=$2 MKMODEL=$3
. "$(dirname "$0")/lib.sh"
for t in jq curl; do command -v $t >/dev/null || { echo "FAIL: $t not installed"; exit 1; }; done
mk_tmp serve_stop
svc= cpid=
cleanup() {
  [ -n "$cpid" ] && kill "$cpid" 2>/dev/null
  [ -n "$svc" ] && kill -KILL "$svc" 2>/dev/null
  wait 2>/dev/null
  [ -n "${FL_KEEP_TMP:-}" ] || rm -rf "$tmp"
}
trap cleanup EXIT

mk_trust "$tmp" slow
# Big enough that 1500 tokens take seconds on this machine (the stream must
# still be running when SIGTERM arrives).
"$MKMODEL" --arch llama --vocab tiny --dim 256 --layers 4 --heads 8 --kv-heads 4 --ffn 768 \
  --ctx 2048 --type q8_0 --seed 3 -o "$tmp/model.gguf" >/dev/null
# runtime.limits.max_queue = 1 (requests running + waiting): while the
# stream runs, a second request must get 503 "overloaded" at once.
created=$(date -u +%Y-%m-%dT%H:%M:%SZ); expires=$(date -u -d '+30 days' +%Y-%m-%dT%H:%M:%SZ)
tmpl() { jq -n --arg c "$created" --arg e "$expires" --argjson q "$1" '{name: "slow", version: "1.0",
  sequence: 1, created: $c, expires: $e, compatibility: {backend: "gguf"},
  runtime: {limits: {max_queue: $q, request_timeout_ms: 60000}}}'; }
tmpl 1 >"$tmp/t.json"
"$FLOTILLA" bundle create --template "$tmp/t.json" --key "$tmp/keys/release.pem" -o "$tmp/b.tar" \
  "$tmp/model.gguf" >/dev/null
# An out-of-range limit is refused when the bundle is made, with the reason.
tmpl 0 >"$tmp/t0.json"
"$FLOTILLA" bundle create --template "$tmp/t0.json" --key "$tmp/keys/release.pem" -o "$tmp/b0.tar" \
  "$tmp/model.gguf" >"$tmp/b0.out" 2>&1
rc=$?
check "bundle create refuses runtime.limits.max_queue = 0 ($(head -c 200 "$tmp/b0.out"))" \
  bash -c "[ $rc != 0 ] && grep -qi 'range' '$tmp/b0.out' && [ ! -e '$tmp/b0.tar' ]"
S=$tmp/state SOCK=$tmp/state/api.sock
mkdir -p "$S/spool"
cat >"$tmp/agent.conf" <<EOC
[agent]
state_dir = $S
trust_dir = $tmp/trust
EOC
"$AGENT" --config "$tmp/agent.conf" run 2>"$tmp/agent.log" &
svc=$!
cp "$tmp/b.tar" "$S/spool/.b.part" && mv "$S/spool/.b.part" "$S/spool/b.tar"
served() { curl -s -m 5 --unix-socket "$SOCK" http://x/v1/status | jq -e '.models.slow.version == "1.0"' >/dev/null; }
end=$((SECONDS + 60))
until served || [ $SECONDS -ge $end ]; do kill -0 $svc 2>/dev/null || break; sleep 0.2; done
check "the model is served on the UNIX socket" served

body='{"model":"slow","prompt":"Once","max_tokens":1500,"temperature":0,"stream":true}'
curl -sN -m 120 --unix-socket "$SOCK" -H 'Content-Type: application/json' -d "$body" \
  http://x/v1/completions >"$tmp/stream.txt" 2>"$tmp/curl.err" &
cpid=$!
end=$((SECONDS + 30))
until [ "$(grep -cs '^data: {' "$tmp/stream.txt")" -ge 5 ] || [ $SECONDS -ge $end ]; do sleep 0.05; done
check "the stream is flowing before SIGTERM" [ "$(grep -c '^data: {' "$tmp/stream.txt")" -ge 5 ]
check "... and not finished yet (the test means something)" bash -c "! grep -q 'DONE' '$tmp/stream.txt'"
out=$(curl -s -m 10 -w '\n%{http_code} %{time_total}' --unix-socket "$SOCK" -H 'Content-Type: application/json' \
  -d '{"model":"slow","prompt":"Hi","max_tokens":4,"temperature":0}' http://x/v1/completions)
read -r code secs <<<"$(tail -1 <<<"$out")"
check "max_queue 1 from the manifest: a concurrent request gets 503 (got $code in $secs s)" [ "$code" = 503 ]
check "... with the OpenAI error code overloaded" \
  bash -c "head -1 <<<'$(head -1 <<<"$out")' | jq -e '.error.code == \"overloaded\"' >/dev/null"
check "... at once (< 1 s, it does not wait for the stream)" awk "BEGIN { exit !($secs < 1) }"
kill -TERM $svc
t0=$(date +%s.%N)
sleep 0.3
code=$(curl -s -o /dev/null -w '%{http_code}' -m 5 --unix-socket "$SOCK" http://x/healthz)
check "a new connection during the drain is not served (got '$code')" [ "$code" != 200 ]
crc=0; wait $cpid || crc=$?; cpid=
arc=0
end=$((SECONDS + 60))
while kill -0 $svc 2>/dev/null && [ $SECONDS -lt $end ]; do sleep 0.1; done
kill -KILL $svc 2>/dev/null
wait $svc || arc=$?; svc=
t1=$(date +%s.%N)
echo "stop took $(awk "BEGIN { printf \"%.2f\", $t1 - $t0 }") s; $(grep -c '^data: {' "$tmp/stream.txt") chunks streamed"
check "curl saw a whole HTTP response (rc $crc)" [ "$crc" = 0 ]
check "the stream ends with data: [DONE]" bash -c "[ \"\$(grep '^data:' '$tmp/stream.txt' | tail -1)\" = 'data: [DONE]' ]"
check "the last chunk before [DONE] has a finish_reason" bash -c \
  "grep '^data: {' '$tmp/stream.txt' | tail -1 | sed 's/^data: //' | jq -e '.choices[0].finish_reason != null' >/dev/null"
check "every chunk is valid JSON" bash -c \
  "grep '^data: {' '$tmp/stream.txt' | sed 's/^data: //' | jq -e . >/dev/null"
check "the agent exits 0 after SIGTERM (got $arc)" [ "$arc" = 0 ]
[ "$fails" -eq 0 ] || { echo "--- stream tail"; tail -4 "$tmp/stream.txt"; echo "--- agent log"; tail -15 "$tmp/agent.log"; }
finish
