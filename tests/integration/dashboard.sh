#!/usr/bin/env bash
# The web dashboard (docs/dashboard.md) in headless Chromium against a real
# controller with real data: mosquitto with mutual TLS + the Flotilla ACL,
# devices played by mosquitto_pub with their own certificates (retained
# states, an event batch), signed bundles pushed with the CLI, rollouts
# created through the API and driven by the controller's engine (one halts
# on its failure gate). Chromium loads the pages and the test asserts on the
# DOM it renders: versions and counts, rollout states, failure rates, the
# device search, a device page with its events, the login form. It keeps a
# screenshot of each page as an artifact, and checks that nothing but the
# controller on 127.0.0.1 is contacted and that the API still wants a token.
#
#   dashboard.sh FLOTILLA FLOTILLA_CONTROLLER MKMODEL ARTIFACT_DIR
set -uo pipefail
if [ $# -ne 4 ]; then
  echo "usage: dashboard.sh FLOTILLA CONTROLLER MKMODEL ARTIFACT_DIR" >&2
  exit 2
fi
FLOTILLA=$1 CONTROLLER=$2 MKMODEL=$3 ART=$4
here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../.." && pwd)
pkg=$src/packaging/mosquitto
. "$here/lib.sh"
CHROMIUM=${FL_CHROMIUM:-chromium}
command -v "$CHROMIUM" >/dev/null ||
  { echo "FAIL: $CHROMIUM not installed (packaging/deps.sh installs it: apt-get install chromium)"; exit 1; }
for t in mosquitto mosquitto_pub jq curl timeout; do
  command -v $t >/dev/null || [ -x /usr/sbin/$t ] ||
    { echo "FAIL: $t not installed (apt-get install mosquitto mosquitto-clients jq curl)"; exit 1; }
done

base=${FL_TEST_TMPDIR:-/tmp}
mkdir -p "$base" "$ART"
# Run as root, the broker drops to user mosquitto, which must reach its files.
if [ "$(id -u)" = 0 ] && id mosquitto >/dev/null 2>&1 && command -v runuser >/dev/null &&
   ! runuser -u mosquitto -- test -x "$base" 2>/dev/null; then
  base=/tmp
fi
tmp=$(mktemp -d "$base/dashboard.XXXXXX")
chmod 0755 "$tmp"
P=$tmp/pki
broker_up=
pids=()
cpid=
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  if [ -n "$cpid" ]; then kill "$cpid" 2>/dev/null; fi
  [ -n "$broker_up" ] && { "$pkg/stop-broker.sh" "$P" >/dev/null 2>&1 || echo "WARN: stop-broker failed"; }
  wait 2>/dev/null
  if [ "$fails" = 0 ] && [ -z "${FL_KEEP_TMP:-}" ]; then rm -rf "$tmp"; else echo "files kept in $tmp"; fi
}
trap cleanup EXIT
trap 'echo "FAIL: interrupted (signal, or the watchdog)"; fails=$((fails + 1)); exit 1' INT TERM
main_pid=$$
( trap 'kill "$s" 2>/dev/null; exit 0' TERM
  sleep "${FL_TEST_WATCHDOG_S:-280}" & s=$!
  wait "$s" && kill -TERM "$main_pid" ) >/dev/null 2>&1 &
pids+=($!)
cd "$tmp"

# ---------------------------------------------------------------- PKI, broker
DEVS="gw-a1 gw-a2 gw-a3 gw-b1 gw-b2 gw-c1 cam-01"
run_pki() { "$FLOTILLA" pki "$@" >/dev/null || { echo "FAIL: flotilla pki $* failed"; exit 1; }; }
run_pki init --dir "$P"
run_pki issue-server --dir "$P" --dns localhost --ip 127.0.0.1
run_pki issue-controller --dir "$P"
for d in $DEVS; do run_pki issue-device "$d" --dir "$P"; done
for _ in $(seq 1 20); do
  PORT=$(( 20000 + (RANDOM * 32768 + RANDOM) % 40000 ))
  if FL_BROKER_WAIT_S=10 "$pkg/start-broker.sh" "$P" "$PORT" >start.out 2>&1; then
    broker_up=1
    break
  fi
  grep -qE "already in use|exited during start-up" start.out || break
done
[ -n "$broker_up" ] || { cat start.out; echo "FAIL: could not start the broker"; exit 1; }
echo "broker on 127.0.0.1:$PORT"
# mpub DEVICE TOPIC [mosquitto_pub args...]: QoS 1 as that device
mpub() {
  local dev=$1 topic=$2; shift 2
  timeout 10 mosquitto_pub -h 127.0.0.1 -p "$PORT" -V 5 -q 1 --cafile "$P/ca.crt" \
    --cert "$P/devices/$dev.crt" --key "$P/devices/$dev.key" -t "$topic" "$@" >/dev/null 2>&1 ||
    bad "mosquitto_pub as $dev to $topic"
}

# ---------------------------------------------------------------- controller
RT=dashboard-reader-token-0123 OT=operator-token-0123456789
mk_trust "$tmp" tiny vision
cat >ctl.conf <<CONF
[controller]
data_dir = $tmp/data
listen = 127.0.0.1
port = 0
trust_dir = $tmp/trust
read_tokens = dash:$RT
operator_tokens = ci:$OT
ingest_flush_ms = 50

[mqtt]
uri = ssl://127.0.0.1:$PORT
ca = $P/ca.crt
cert = $P/controller.crt
key = $P/controller.key
CONF
"$CONTROLLER" --config ctl.conf --port-file port 2>>controller.log &
cpid=$!
for _ in $(seq 100); do [ -s port ] && break; sleep 0.1; done
[ -s port ] || { bad "controller did not start: $(cat controller.log)"; finish; exit 1; }
HP=$(cat port)
URL=http://127.0.0.1:$HP
export FLOTILLA_CONTROLLER=$URL
get() { curl -s -H "Authorization: Bearer $RT" "$URL$1"; }
code() { curl -s -o /dev/null -w '%{http_code}' "$@"; }
wait_until() { local n=$(( $1 * 5 )) _; shift; for _ in $(seq $n); do "$@" && return 0; sleep 0.2; done; "$@"; }
connected() { get /metrics | grep -q '^flotilla_mqtt_connected 1$'; }
check "controller connected to the broker" wait_until 15 connected

# ---------------------------------------------------------------- fleet data
# state ID ARCH SITE ONLINE MODELS_JSON: the device's retained state.
state() {
  local m
  m=$(jq -cn --arg id "$1" --arg arch "$2" --arg site "$3" --argjson models "$5" \
    '{v: 1, device: $id, online: true, ts: "2026-11-25T10:00:00Z", agent: "0.1.0",
      hw: {arch: $arch, ram_mb: 2048, accelerators: [], backends: ["gguf"]},
      labels: {site: $site}, models: $models}')
  mpub "$1" "flotilla/v1/dev/$1/state" -r -m "$m"
}
# model VERSION [INSTALL_VERSION INSTALL_STATE ERROR]: one model's entry.
model() {
  jq -cn --arg v "$1" --arg iv "${2:-}" --arg is "${3:-}" --arg err "${4:-}" \
    '{current: "a", slots: {a: {status: "ready", version: $v, sequence: 1}}}
     + (if $iv == "" then {} else {install: {version: $iv, state: $is, error: $err,
        bytes_done: 0, bytes_total: 0, chunks_done: 0, chunks_total: 0}} end)'
}
for d in gw-a1 gw-a2 gw-a3; do state $d x86_64 lab 1 "{\"tiny\":$(model 1.0)}"; done
state gw-b1 aarch64 plant-7 1 "{\"tiny\":$(model 1.0 1.1 REJECTED 'acceptance: accuracy 0.61 < 0.80'),\"vision\":$(model 2.3)}"
state gw-b2 aarch64 plant-7 1 "{\"tiny\":$(model 1.1 1.1 COMMITTED),\"vision\":$(model 2.3)}"
state gw-c1 aarch64 plant-9 1 "{\"tiny\":$(model 1.0)}"
# cam-01's label carries markup: the page must show it as text.
state cam-01 x86_64 'dock<i>x</i>' 1 "{\"vision\":$(model 2.3)}"
# gw-c1 goes away: its last will.
mpub gw-c1 flotilla/v1/dev/gw-c1/state -r -m '{"v":1,"device":"gw-c1","online":false}'
# gw-b1's events (one plain-JSON batch on its event topic).
now=$(date +%s)
mpub gw-b1 flotilla/v1/dev/gw-b1/event -m "$(jq -cn --argjson t "$now" '{v: 1, device: "gw-b1",
  stream: "00112233445566aa", first: 1, last: 2, n: 2, records: [
  {seq: 1, type: "event", t: ($t - 60), kind: "install_started", model: "tiny", version: "1.1",
   reason: "deploy"},
  {seq: 2, type: "event", t: $t, kind: "install_rejected", model: "tiny", version: "1.1",
   reason: "acceptance", text: "acceptance test failed: accuracy 0.61 < 0.80",
   details: {accuracy: 0.61, min: 0.8}}]}')"
n_devices() { [ "$(get /api/v1/devices | jq '.devices | length')" = 7 ]; }
check "the controller registered the 7 devices" wait_until 10 n_devices
has_events() { [ "$(get /api/v1/devices/gw-b1 | jq '.events | length')" = 2 ]; }
wait_until 10 has_events || get /metrics | grep -E 'telemetry_batches|mqtt_refused|mqtt_messages'
check "gw-b1's two events are stored" has_events

# Signed bundles, then two rollouts through the API, driven by the engine.
mk_model m/tiny.gguf 1
mk_model m/vision.gguf 2
mk_bundle tiny11.tar "$tmp/keys" tiny 1.1 2 m/tiny.gguf
mk_bundle vision24.tar "$tmp/keys" vision 2.4 2 m/vision.gguf
for b in tiny11.tar vision24.tar; do
  out=$("$FLOTILLA" push $b --token $OT 2>&1)
  check "push $b ($out)" [ $? -eq 0 ]
done
post() { curl -s -o post.json -w '%{http_code}' -X POST -H "Authorization: Bearer $OT" --data-binary "$2" "$URL$1"; }
check "rollout 1: tiny 1.1 to site=lab (201)" [ "$(post /api/v1/rollouts \
  '{"model":"tiny","version":"1.1","waves":[50,100],"soak_s":3600,"max_failure_rate":0.6,"min_sample":2,"select":{"labels":{"site":"lab"}}}')" = 201 ]
check "rollout 2: vision 2.4 to aarch64 (201)" [ "$(post /api/v1/rollouts \
  '{"model":"vision","version":"2.4","waves":[1,2],"wave_unit":"count","soak_s":3600,"select":{"arch":"aarch64"}}')" = 201 ]
ro() { get "/api/v1/rollouts/$1" | jq -r "$2"; }
sent1() { [ "$(ro 1 .counts.attempted)" = 2 ]; }
check "the engine sent rollout 1's first wave (2 of 3 lab devices)" wait_until 15 sent1
# Every lab device now reports tiny 1.1 rejected: the gate (2 of 2 > 60%) halts it.
for d in gw-a1 gw-a2 gw-a3; do
  state $d x86_64 lab 1 "{\"tiny\":$(model 1.0 1.1 REJECTED 'acceptance: accuracy 0.55 < 0.80')}"
done
halted() { [ "$(ro 1 .state)" = halted ]; }
check "rollout 1 halts on its failure gate" wait_until 15 halted
sent2() { [ "$(ro 2 .counts.attempted)" = 1 ]; }
check "rollout 2 runs its first wave (1 device)" wait_until 15 sent2
get /api/v1/fleet >fleet.json
check "fleet: tiny 1.1 installs: 5 attempted, 4 failed, 1 ok; 1 device runs it" \
  [ "$(jq -c '.models[] | select(.model == "tiny") | .versions[] | select(.version == "1.1") | [.attempted, .failed, .succeeded, .devices]' fleet.json)" = "[5,4,1,1]" ]

# ---------------------------------------------------------------- HTTP side
check "unauthenticated GET /api/v1/fleet is 401" [ "$(code "$URL/api/v1/fleet")" = 401 ]
check "unauthenticated GET /api/v1/devices is 401" [ "$(code "$URL/api/v1/devices")" = 401 ]
check "unauthenticated GET /api/v1/rollouts is 401" [ "$(code "$URL/api/v1/rollouts")" = 401 ]
check "a wrong token on /api/v1/fleet is 401" [ "$(code -H 'Authorization: Bearer nope-nope-nope-nope' "$URL/api/v1/fleet")" = 401 ]
check "a read token may not POST a rollout (403)" [ "$(code -X POST -H "Authorization: Bearer $RT" --data-binary '{}' "$URL/api/v1/rollouts")" = 403 ]
curl -s -D headers.txt -o index.html "$URL/"
check "GET / serves the dashboard without a token (200, text/html)" \
  grep -qi '^content-type: text/html; charset=utf-8' headers.txt
check "the page itself holds no fleet data" bash -c "! grep -q 'gw-' index.html"
check "CSP: default-src 'self', nothing else allowed" grep -qi "^content-security-policy: default-src 'self';" headers.txt
check "X-Content-Type-Options: nosniff" grep -qi '^x-content-type-options: nosniff' headers.txt
check "ETag and Cache-Control: no-cache" bash -c "grep -qi '^etag: \"[0-9a-f]\{32\}\"' headers.txt && grep -qi '^cache-control: no-cache' headers.txt"
check "GET /ui/app.js is text/javascript" \
  [ "$(curl -s -o /dev/null -w '%{content_type}' "$URL/ui/app.js")" = "text/javascript; charset=utf-8" ]
check "path traversal /ui/../ is refused (400)" [ "$(code --path-as-is "$URL/ui/../ctl.conf")" = 400 ]
check "unknown file /ui/nope.js is 404" [ "$(code "$URL/ui/nope.js")" = 404 ]
# The served assets name no other host: nothing to fetch from anywhere else.
# (The SVG namespace name is an identifier, never fetched.)
ext=$(cat "$src"/controller/web/*.html "$src"/controller/web/*.js "$src"/controller/web/*.css \
  "$src"/controller/web/*.svg | sed 's|xmlns="http://www.w3.org/2000/svg"||g' |
  grep -oE "(https?:)?//[A-Za-z0-9.-]+" || true)
check "the dashboard's files reference no external URL (${ext:-none})" [ -z "$ext" ]

# ---------------------------------------------------------------- Chromium
# Each run: a fresh profile, no background networking, a net log of every
# request the browser made.
runs=0
chrome() { # OUT URL [extra flags]: the rendered DOM in OUT
  local out=$1 url=$2; shift 2
  runs=$((runs + 1))
  timeout 120 "$CHROMIUM" --headless --no-sandbox --disable-gpu --no-first-run \
    --no-default-browser-check --disable-background-networking --disable-component-update \
    --disable-sync --disable-extensions --disable-default-apps --mute-audio \
    --host-resolver-rules="MAP * ~NOTFOUND, EXCLUDE 127.0.0.1" \
    --user-data-dir="$tmp/profile.$runs" --window-size=1400,1700 \
    --log-net-log="$tmp/netlog.$runs.json" --virtual-time-budget=8000 "$@" "$url" \
    >"$out" 2>"$out.err"
  local rc=$?
  [ $rc -eq 0 ] || echo "chromium exited $rc: $(tail -3 "$out.err")"
  return $rc
}
dom() { chrome "$1" "$2" --dump-dom; }
# rows FILE ATTR: the values of data-ATTR="..." in the DOM
rows() { grep -o "data-$2=\"[^\"]*\"" "$1" | sed 's/.*="\(.*\)"/\1/' | sort | tr '\n' ' '; }

check "chromium renders the fleet page" dom fleet.html "$URL/#token=$RT"
check "the page rendered its data (body data-loaded)" grep -q 'data-loaded="true"' fleet.html
check "every device is listed (gw-a1 .. cam-01)" \
  [ "$(rows fleet.html device)" = "cam-01 gw-a1 gw-a2 gw-a3 gw-b1 gw-b2 gw-c1 " ]
check "fleet summary: 7 devices, 6 online, 1 offline" \
  grep -q '7 devices: <span class="badge online">6 online</span> <span class="badge offline">1 offline</span>' fleet.html
check "version distribution: tiny 1.0 on 5 of 6 devices (83%)" \
  grep -q '<tr data-model="tiny" data-version="1.0"><td>1.0</td><td><div class="bar"><span style="width: 83.3%;"></span></div></td><td class="num">5</td><td class="num">83%</td></tr>' fleet.html
check "version distribution: tiny 1.1 on 1, vision 2.3 on 3" bash -c \
  "grep -q 'data-model=\"tiny\" data-version=\"1.1\"><td>1.1</td>.*<td class=\"num\">1</td>' fleet.html &&
   grep -q 'data-model=\"vision\" data-version=\"2.3\"><td>2.3</td>.*<td class=\"num\">3</td>' fleet.html"
check "rollouts: 1 halted, 2 running" grep -q 'data-rollout="1" data-state="halted"' fleet.html
check "rollout 2 is shown running" grep -q 'data-rollout="2" data-state="running"' fleet.html
check "rollout 1's gate is shown crossed with its reason" bash -c \
  "grep -q '<td class=\"gate breached\">failed 100% (max 60%, min sample 2)' fleet.html &&
   grep -q 'halted: failure gate crossed in wave 1' fleet.html"
check "rollout 1's waves: 50% current, 100% pending" \
  grep -q '<div class="waves"><span class="wave current" title="wave 1">50%</span><span class="wave" title="wave 2">100%</span></div>' fleet.html
check "failure rate tiny 1.1: 5 installs, 4 failed, 80%" \
  grep -q '<tr data-release="tiny@1.1"><td>tiny</td><td>1.1</td><td class="num">1</td><td class="num">5</td><td class="num">1</td><td class="num">4</td><td class="num">0</td><td class="num rate bad">80%</td><td class="muted">2 failed of 2 attempted (1 rollout)</td></tr>' fleet.html
check "failure rates: vision 2.4, known from its rollout only" \
  grep -q '<tr data-release="vision@2.4"><td>vision</td><td>2.4</td><td class="num">0</td><td class="num">0</td>.*<td class="muted">0 failed of 1 attempted (1 rollout)</td></tr>' fleet.html
check "device health: gw-b1 failed, gw-c1 offline, gw-b2 ok" bash -c \
  "grep -q 'data-device=\"gw-b1\" data-health=\"failed\"' fleet.html &&
   grep -q 'data-device=\"gw-c1\" data-health=\"offline\"' fleet.html &&
   grep -q 'data-device=\"gw-b2\" data-health=\"ok\"' fleet.html"

check "markup in a device label is shown as text, not inserted" bash -c \
  "grep -q '<span class=\"chip\">site=dock&lt;i&gt;x&lt;/i&gt;</span>' fleet.html && ! grep -q '<i>x</i>' fleet.html"

# Search (the query is in the address, as typing leaves it).
check "search health:failed" dom q1.html "$URL/?q=health:failed#token=$RT"
check "health:failed lists the 4 devices whose tiny 1.1 install failed" \
  [ "$(rows q1.html device)" = "gw-a1 gw-a2 gw-a3 gw-b1 " ]
check "... and says 4 of 7" grep -q '4 of 7 devices' q1.html
dom q2.html "$URL/?q=site%3Dplant-7%20version%3A2.3#token=$RT"
check "search 'site=plant-7 version:2.3' lists gw-b1 gw-b2" [ "$(rows q2.html device)" = "gw-b1 gw-b2 " ]
dom q3.html "$URL/?q=cam#token=$RT"
check "search 'cam' lists cam-01 only" [ "$(rows q3.html device)" = "cam-01 " ]
dom q4.html "$URL/?q=id:nothing-like-this#token=$RT"
check "a search that matches nothing says so" grep -q 'no device matches' q4.html
check "... and lists no device" [ -z "$(rows q4.html device)" ]

# The device page.
check "chromium renders gw-b1's page" dom dev.html "$URL/ui/device.html?id=gw-b1#token=$RT"
check "device page: title, health failed" \
  grep -q '<h2 id="device-title">Device gw-b1 <span class="badge health-failed">failed</span></h2>' dev.html
check "device page: both events, newest first" [ "$(grep -o 'data-event="[a-z_]*"' dev.html | tr '\n' ' ')" = 'data-event="install_rejected" data-event="install_started" ' ]
check "device page: the rejection's reason and text" \
  grep -q '<td>acceptance</td><td>acceptance test failed: accuracy 0.61 &lt; 0.80' dev.html
check "device page: install REJECTED of tiny 1.1 with its error" \
  grep -q '<span class="badge health-failed">REJECTED</span> 1.1<div class="reason">acceptance: accuracy 0.61 &lt; 0.80</div>' dev.html
check "device page: labels and models" bash -c \
  "grep -q '<span class=\"chip\">site=plant-7</span>' dev.html && grep -q 'data-model=\"vision\"' dev.html"
dom dev404.html "$URL/ui/device.html?id=no-such-dev#token=$RT"
check "an unknown device says so" grep -q 'unknown device' dev404.html

# Without a token, or with a wrong one: the login form, no data.
dom login.html "$URL/"
check "no token: the login form is shown, the data is not" bash -c \
  "grep -q '<form id=\"login\" class=\"login\">' login.html && grep -q '<main id=\"content\" hidden=\"\"' login.html &&
   ! grep -q 'data-device=' login.html"
dom badtok.html "$URL/#token=not-the-right-token-000"
check "a wrong token: the form says the controller refused it" \
  grep -q 'the controller refused this token (HTTP 401)' badtok.html

# Screenshots (artifacts).
rm -f "$ART/dashboard.png" "$ART/dashboard-device.png"
chrome shot1.out "$URL/#token=$RT" --screenshot="$ART/dashboard.png" --hide-scrollbars
check "screenshot of the fleet page ($ART/dashboard.png)" [ -s "$ART/dashboard.png" ]
chrome shot2.out "$URL/ui/device.html?id=gw-b1#token=$RT" --screenshot="$ART/dashboard-device.png"
check "screenshot of the device page ($ART/dashboard-device.png)" [ -s "$ART/dashboard-device.png" ]
check "screenshots are PNG" bash -c "head -c 8 '$ART/dashboard.png' | od -An -tx1 | grep -q '89 50 4e 47'"

# Every request the pages made (the navigation itself, or initiated by the
# page's origin) went to the controller. Chromium's own background requests
# (component updates, account checks: initiator "not an origin") are no
# request of the page; --host-resolver-rules keeps them off the network.
page_urls() {
  jq -r '.constants.logEventTypes.URL_REQUEST_START_JOB as $t | .events[] | select(.type == $t)
    | .params | select(.url != null and (.request_type == "main frame" or .initiator != "not an origin"))
    | .url' "$@"
}
for f in "$tmp"/netlog.*.json; do
  jq -e .events "$f" >/dev/null 2>&1 || bad "$f: not a complete net log"
done
page_urls "$tmp"/netlog.*.json >page_urls.txt
echo "the pages requested $(wc -l <page_urls.txt) URLs, $(sed -E 's|^([a-z]+://[^/]*).*|\1|' page_urls.txt | sort -u | tr '\n' ' ')"
foreign=$(grep -vE "^http://127\.0\.0\.1:$HP/" page_urls.txt | sort -u || true)
check "the pages requested nothing but http://127.0.0.1:$HP (${foreign:-ok})" [ -z "$foreign" ]
check "... and the net logs did see the pages' API requests" grep -q "^http://127.0.0.1:$HP/api/v1/fleet\$" page_urls.txt
# The first run lasted 8 s of virtual time: the 5 s refresh read the API again.
refreshes=$(page_urls "$tmp/netlog.1.json" | grep -c "^http://127.0.0.1:$HP/api/v1/fleet\$")
check "the fleet page refreshed by itself (/api/v1/fleet read $refreshes times in 8 s)" [ "$refreshes" -ge 2 ]

# The controller stops cleanly (under ASan: no leak or error report).
kill -TERM "$cpid"
wait "$cpid"
rc=$?
cpid=
check "the controller exits 0 on SIGTERM (exit $rc)" [ $rc -eq 0 ]
check "no sanitizer report in the controller's log" \
  bash -c "! grep -qE 'AddressSanitizer|LeakSanitizer|runtime error' controller.log"

echo "artifacts: $ART/dashboard.png $ART/dashboard-device.png"
finish
