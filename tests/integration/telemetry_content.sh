#!/usr/bin/env bash
# The failing request's content in a runner_crashed event (docs/telemetry.md
# "Agent", "Request content"): only when BOTH the device config allows it
# (telemetry.include_content = true) AND the version's manifest opts in
# ("telemetry": {"include_content": true}). Real broker, controller, agents:
#   dev1 (config allows), v1 without the manifest opt-in -> no content
#   dev1 (config allows), v2 with the manifest opt-in    -> content
#   dev2 (config default), v2 with the manifest opt-in   -> no content
#
# usage: telemetry_content.sh FLOTILLA FLOTILLA-CONTROLLER FLOTILLA-AGENT MKMODEL
set -u
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
. "$here/telemetry_lib.sh" "$1" "$2" "$3"
FLOTILLA=$1 MKMODEL=$4
command -v jq >/dev/null || { echo "FAIL: jq is not installed"; exit 1; }
jqe() { jq -e "$@" >/dev/null; } # a check on JSON (its output hidden, not the check's)
tele_setup tele-content dev1 dev2

mk_model "$FLEET_DIR/m/model.gguf" 1
created=$(date -u +%Y-%m-%dT%H:%M:%SZ); expires=$(date -u -d '+30 days' +%Y-%m-%dT%H:%M:%SZ)
bundle() { # VERSION SEQ TELEMETRY(json or null)
  jq -n --arg c "$created" --arg e "$expires" --arg v "$1" --argjson s "$2" --argjson t "$3" '{name: "m",
    version: $v, sequence: $s, created: $c, expires: $e, compatibility: {backend: "gguf"}} +
    (if $t == null then {} else {telemetry: $t} end)' >"$FLEET_DIR/t$2.json"
  "$FLOTILLA" bundle create --template "$FLEET_DIR/t$2.json" --key "$FLEET_DIR/keys/release.pem" \
    -o "$FLEET_DIR/v$2.tar" "$FLEET_DIR/m/model.gguf" >/dev/null
}
bundle 1.0 1 null
bundle 2.0 2 '{"include_content": true}'
check "bundles made" test -s "$FLEET_DIR/v1.tar" -a -s "$FLEET_DIR/v2.tar"
check "the signed manifest keeps the opt-in" bash -c \
  "'$FLOTILLA' bundle inspect '$FLEET_DIR/v2.tar' --json | grep -q '\"include_content\"[: ]*true'"
check "and a manifest without it has none" bash -c \
  "! '$FLOTILLA' bundle inspect '$FLEET_DIR/v1.tar' --json | grep -q include_content"
bundle 9.0 9 '{"include_content": "yes"}' 2>/dev/null
check "a non-boolean opt-in is refused" test ! -s "$FLEET_DIR/v9.tar"

declare -A PORT
start() { # ID CONFIG-LINES
  local try port
  for try in 1 2 3 4 5; do
    port=$(( 20000 + (RANDOM * 32768 + RANDOM) % 40000 ))
    tele_agent_start "$1" "$2" "listen = 127.0.0.1:$port
socket = off"
    fleet_wait 10 curl -s -m 2 -o /dev/null "http://127.0.0.1:$port/healthz" && break
    kill -0 "${FLEET_AGENT_PID[$1]}" 2>/dev/null && break
    wait "${FLEET_AGENT_PID[$1]}" 2>/dev/null
  done
  PORT[$1]=$port
}
start dev1 "include_content = true"
start dev2 ""
check "agents online" fleet_wait_online 30 dev1 dev2

api() { curl -s -m 30 "$@"; }
st() { api "http://127.0.0.1:${PORT[$1]}/v1/status" | jq -r ".models.m.$2 // empty"; }
served() { [ "$(st "$1" version)" = "$2" ] && [ "$(st "$1" pid)" -gt 1 ] 2>/dev/null; }
spool() { # ID TAR
  local d=$FLEET_DIR/$1/state/spool
  cp "$2" "$d/.x.part" && mv "$d/.x.part" "$d/$(basename "$2")"
}
# crash ID VERSION MARKER: a request dies with the runner (kill -9); prints
# the runner_crashed event of that version at the controller.
crash() {
  local pid ev
  pid=$(st "$1" pid)
  kill -STOP "$pid"
  api -d "{\"model\":\"m\",\"prompt\":\"$3\",\"max_tokens\":7,\"temperature\":0.5}" \
    "http://127.0.0.1:${PORT[$1]}/v1/completions" >/dev/null &
  FLEET_EXTRA_PIDS+=($!)
  sleep 1
  kill -KILL "$pid"
  for i in $(seq 100); do
    ev=$(q "SELECT body FROM telemetry WHERE device='$1' AND kind='event:runner_crashed'
            AND json_extract(body,'\$.version')='$2' LIMIT 1")
    [ -n "$ev" ] && break
    sleep 0.2
  done
  echo "$ev"
}
has_req() { jq -e '.details.request.bytes > 20 and .details.request.params.max_tokens == 7' >/dev/null; }

spool dev1 "$FLEET_DIR/v1.tar"
check "dev1 serves v1" fleet_wait 60 served dev1 1.0
e=$(crash dev1 1.0 "secret-one")
check "dev1 v1: runner_crashed with the request's size and parameters" has_req <<<"$e"
check "dev1 v1 (manifest does not opt in): no content" bash -c "! grep -q 'secret-one' <<<'$e' && jq -e '.details.request | has(\"content\") | not' <<<'$e' >/dev/null"

spool dev1 "$FLEET_DIR/v2.tar"
spool dev2 "$FLEET_DIR/v2.tar"
check "dev1 serves v2" fleet_wait 60 served dev1 2.0
check "dev2 serves v2" fleet_wait 60 served dev2 2.0
e=$(crash dev1 2.0 "secret-two")
echo "$e" | head -c 400; echo
check "dev1 v2: runner_crashed event" has_req <<<"$e"
check "dev1 v2 (config allows, manifest opts in): the content is sent" \
  jqe '.details.request.content == "secret-two"' <<<"$e"
e=$(crash dev2 2.0 "secret-three")
check "dev2 v2: runner_crashed event" has_req <<<"$e"
check "dev2 v2 (manifest opts in, config does not): no content" bash -c "! grep -q 'secret-three' <<<'$e'"

finish
