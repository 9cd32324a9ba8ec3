#!/usr/bin/env bash
# The controller's HTTP API end to end: a real flotilla-controller on
# 127.0.0.1 (free port), bundles pushed with the CLI, every kind of bad
# request refused with its status and nothing changed, /metrics, a clean
# SIGTERM and a restart that keeps the data.
#
#   controller_api.sh FLOTILLA FLOTILLA_CONTROLLER FL_CTL_CLI
# FL_CTL_CLI runs the CLI's push/devices commands alone; `FLOTILLA push` is
# used instead when the CLI dispatches it.
set -uo pipefail
FLOTILLA=$1 CONTROLLER=$2 CTL_CLI=$3
. "$(dirname "$0")/lib.sh"
for t in jq curl timeout; do
  command -v $t >/dev/null || { echo "FAIL: $t not installed"; exit 1; }
done
mk_tmp ctlapi
cpid=
cleanup() {
  if [ -n "$cpid" ]; then kill -9 "$cpid" 2>/dev/null; wait "$cpid" 2>/dev/null; fi
  rm -rf "$tmp"
}
trap cleanup EXIT
cd "$tmp"

PUSH=("$CTL_CLI" push) DEVICES=("$CTL_CLI" devices)
if "$FLOTILLA" push --help >/dev/null 2>&1; then PUSH=("$FLOTILLA" push); fi
if "$FLOTILLA" devices --help >/dev/null 2>&1; then DEVICES=("$FLOTILLA" devices); fi

RT=reader-token-0123456789 OT=operator-token-0123456789
mk_trust "$tmp" tiny
"$FLOTILLA" key generate keys/stranger.pem >/dev/null
cat >ctl.conf <<CONF
[controller]
data_dir = $tmp/data
listen = 127.0.0.1
port = 0
trust_dir = $tmp/trust
read_tokens = dash:$RT
operator_tokens = ci:$OT
max_upload_bytes = 8M
ingest_flush_ms = 50
CONF

start_controller() {
  rm -f port
  "$CONTROLLER" --config ctl.conf --port-file port 2>>controller.log &
  cpid=$!
  for _ in $(seq 100); do [ -s port ] && break; sleep 0.1; done
  [ -s port ] || { bad "controller did not start: $(cat controller.log)"; finish; exit 1; }
  URL=http://127.0.0.1:$(cat port)
}
stop_controller() { # SIGTERM must end it cleanly and quickly
  kill -TERM "$cpid"
  local rc=0
  timeout 10 tail --pid="$cpid" -f /dev/null || rc=1
  wait "$cpid"; local st=$?
  cpid=
  [ $rc -eq 0 ] && [ $st -eq 0 ]
}
# http METHOD PATH TOKEN [curl args...]: prints the status, body in body.json
http() {
  local m=$1 p=$2 tok=$3; shift 3
  local auth=()
  [ -n "$tok" ] && auth=(-H "Authorization: Bearer $tok")
  curl -s -o body.json -w '%{http_code}' -X "$m" "${auth[@]}" "$@" "$URL$p"
}
state_of_bundles() { http GET /api/v1/bundles $RT >/dev/null; jq -c '[.bundles[] | [.model, .version, .sequence, .envelope_sha256]]' body.json; }

start_controller
check "healthz without a token" [ "$(curl -s "$URL/healthz")" = ok ]

head -c 300000 /dev/urandom >model.bin
echo '{"labels": ["a", "b"]}' >labels.json
mk_bundle b1.tar "$tmp/keys" tiny 1.0 1 model.bin labels.json
"$FLOTILLA" bundle create -o stranger.tar --key keys/stranger.pem --name tiny --version 1.1 \
  --sequence 2 model.bin >/dev/null

out=$("${PUSH[@]}" b1.tar --controller "$URL" --token $OT 2>err.txt); rc=$?
check "push a signed bundle with the CLI (exit 0)" [ $rc -eq 0 ]
check "push reports it (got: $out $(cat err.txt))" grep -q "^pushed tiny 1.0 (sequence 1" <<<"$out"
check "GET /api/v1/bundles lists it, verified" \
  [ "$(http GET /api/v1/bundles $RT >/dev/null; jq -r '[(.bundles | length), .bundles[0].model, .bundles[0].version, .bundles[0].verified] | join(" ")' body.json)" = "1 tiny 1.0 true" ]
before=$(state_of_bundles)
out=$(FLOTILLA_TOKEN=$OT "${PUSH[@]}" b1.tar --controller "$URL"); rc=$?
check "re-push is idempotent (exit 0, 'already present')" bash -c "[ $rc -eq 0 ] && grep -q 'already present' <<<'$out'"
check "re-push changed nothing" [ "$(state_of_bundles)" = "$before" ]

check "no token -> 401" [ "$(http GET /api/v1/bundles "")" = 401 ]
check "401 body is a JSON error" jq -e '.error | length > 0' body.json >/dev/null
check "bad token -> 401" [ "$(http POST /api/v1/bundles wrong-token-0123456789 --data-binary @b1.tar)" = 401 ]
check "read-only token POST -> 403" [ "$(http POST /api/v1/bundles $RT --data-binary @b1.tar)" = 403 ]
head -c 1 /dev/zero >one; truncate -s 9M one
check "huge body -> 413" [ "$(http POST /api/v1/bundles $OT --data-binary @one)" = 413 ]
check "huge chunked body -> 413" [ "$(http POST /api/v1/bundles $OT -H 'Transfer-Encoding: chunked' --data-binary @one)" = 413 ]
head -c 4096 /dev/urandom >junk.tar
check "malformed bundle -> 400" [ "$(http POST /api/v1/bundles $OT --data-binary @junk.tar)" = 400 ]
check "empty body -> 400" [ "$(http POST /api/v1/bundles $OT --data-binary '')" = 400 ]
check "untrusted signer -> 422" [ "$(http POST /api/v1/bundles $OT --data-binary @stranger.tar)" = 422 ]
head -c 150000 b1.tar >trunc.tar
check "truncated bundle -> 400" [ "$(http POST /api/v1/bundles $OT --data-binary @trunc.tar)" = 400 ]
check "unknown query parameter -> 400" [ "$(http GET '/api/v1/devices?colour=red' $RT)" = 400 ]
check "bad filter value -> 400" [ "$(http GET '/api/v1/devices?online=maybe' $RT)" = 400 ]
check "repeated filter -> 400" [ "$(http GET '/api/v1/devices?arch=a&arch=b' $RT)" = 400 ]
check "DELETE -> 405" [ "$(http DELETE /api/v1/bundles $OT)" = 405 ]
check "unknown path -> 404" [ "$(http GET /api/v1/nothing $RT)" = 404 ]
check "unknown device -> 404" [ "$(http GET /api/v1/devices/gw-1 $RT)" = 404 ]
check "after all refusals the bundles are unchanged" [ "$(state_of_bundles)" = "$before" ]
check "no upload left in data/tmp" [ -z "$(ls -A data/tmp)" ]

err=$("${PUSH[@]}" junk.tar --controller "$URL" --token $OT 2>&1 >/dev/null); rc=$?
check "CLI push of junk: exit 1, one clear line ($err)" \
  bash -c "[ $rc -eq 1 ] && [ \$(wc -l <<<'$err') -eq 1 ] && grep -q '^flotilla: push junk.tar: bundle refused.*HTTP 400' <<<'$err'"
err=$("${PUSH[@]}" b1.tar --controller "$URL" --token $RT 2>&1 >/dev/null); rc=$?
check "CLI push with a read-only token: exit 1, HTTP 403 ($err)" bash -c "[ $rc -eq 1 ] && grep -q 'HTTP 403' <<<'$err'"
err=$("${PUSH[@]}" b1.tar --controller http://127.0.0.1:1 --token $OT 2>&1 >/dev/null); rc=$?
check "CLI push to a closed port: exit 1 ($err)" [ $rc -eq 1 ]
out=$("${DEVICES[@]}" list --controller "$URL" --token $RT --json); rc=$?
check "devices list --json: empty fleet" bash -c "[ $rc -eq 0 ] && [ \"\$(jq '.devices | length' <<<'$out')\" = 0 ]"
out=$("${DEVICES[@]}" --controller "$URL" --token $RT --online --arch x86_64); rc=$?
check "devices with filters: header only" bash -c "[ $rc -eq 0 ] && [ \$(wc -l <<<'$out') -eq 1 ]"
err=$("${DEVICES[@]}" show gw-1 --controller "$URL" --token $RT 2>&1); rc=$?
check "devices show unknown: exit 1 with 404 ($err)" bash -c "[ $rc -eq 1 ] && grep -q 'HTTP 404' <<<'$err'"

http GET /metrics $RT >/dev/null
m=$(cat body.json)
check "metrics: one bundle" grep -qx 'flotilla_bundles 1' <<<"$m"
check "metrics: pushes added 1, existing 1" bash -c "grep -qx 'flotilla_bundle_pushes_total{result=\"added\"} 1' <<<'$m' && grep -qx 'flotilla_bundle_pushes_total{result=\"existing\"} 1' <<<'$m'"
refused=$(sed -n 's/^flotilla_bundle_pushes_total{result="refused"} //p' <<<"$m")
check "metrics: refused pushes counted ($refused)" [ "${refused:-0}" -ge 4 ]
check "metrics: devices by state" grep -qx 'flotilla_devices{state="online"} 0' <<<"$m"
check "metrics needs a token" [ "$(http GET /metrics "")" = 401 ]

check "SIGTERM stops the controller cleanly" stop_controller
start_controller
check "after a restart the bundle is still there" [ "$(state_of_bundles)" = "$before" ]
check "second SIGTERM stop" stop_controller
finish
