#!/usr/bin/env bash
# Malformed and oversized telemetry (docs/telemetry.md "Decoder"): a device
# with its own certificate ("bad") publishes junk with mosquitto_pub on its
# own event and tele topics: text, wrong JSON, a batch naming another device,
# a declared raw length over the limit, a zlib bomb, a stream shorter than
# declared, an oversized payload. Each is counted and refused and nothing of
# it is stored, while a good agent's records keep arriving and a valid batch
# from the same "bad" device is still taken. Its attempt to write into the
# good device's topics is refused by the broker's ACL.
#
# usage: telemetry_junk.sh FLOTILLA FLOTILLA-CONTROLLER FLOTILLA-AGENT
set -u
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
. "$here/telemetry_lib.sh" "$1" "$2" "$3"
command -v mosquitto_pub >/dev/null || { echo "FAIL: mosquitto_pub missing"; exit 1; }
command -v python3 >/dev/null || { echo "FAIL: python3 missing"; exit 1; }
tele_setup tele-junk dev1 bad

tele_agent_start dev1
check "agent dev1 online" fleet_wait_online 30 dev1
sleep 3

P=$FLEET_DIR/pki
J=$FLEET_DIR/junk
mkdir -p "$J"
pub() { # TOPIC FILE [ID]
  mosquitto_pub -V mqttv5 -h 127.0.0.1 -p "$FLEET_MQTT_PORT" --cafile "$P/ca.crt" \
    --cert "$P/devices/${3:-bad}.crt" --key "$P/devices/${3:-bad}.key" -i "${3:-bad}" \
    -q 1 -t "$1" -f "$2" 2>&1
}
python3 - "$J" <<'EOF'
import json, struct, sys, zlib, os
d = sys.argv[1]
def w(name, data):
    open(os.path.join(d, name), "wb").write(data)
def env(dev, recs, stream="00000000000000aa"):
    return json.dumps({"v": 1, "device": dev, "stream": stream, "first": recs[0]["seq"],
                       "last": recs[-1]["seq"], "n": len(recs), "records": recs}).encode()
ev = {"seq": 1, "t": 1764000000, "type": "event", "kind": "disk_low",
      "reason": "below_threshold"}
w("text", b"hello, this is not telemetry")
w("json", b'{"v":1,"device":"bad"}')
w("unknown-field", env("bad", [dict(ev, extra=1)]))
w("other-device", env("dev1", [ev]))
w("declared-too-big", b"FLZ\x01" + struct.pack(">I", 64 << 20) + zlib.compress(b"{}"))
bomb = b"{" + b" " * (8 << 20) + b"}"
w("bomb", b"FLZ\x01" + struct.pack(">I", 1000) + zlib.compress(bomb, 9))
raw = env("bad", [ev])
w("short", b"FLZ\x01" + struct.pack(">I", len(raw) + 50) + zlib.compress(raw))
w("truncated", b"FLZ\x01" + struct.pack(">I", len(raw)) + zlib.compress(raw)[:-6])
w("oversized", b"{" + b" " * (256 * 1024 + 200) + b"}")
w("good", env("bad", [ev, dict(ev, seq=2, kind="clock_jump", reason="forward")]))
w("spoof", env("dev1", [ev], stream="00000000000000bb"))
EOF

ref0=$(fleet_metric 'flotilla_telemetry_batches_total{result="refused"}')
mref0=$(fleet_metric 'flotilla_mqtt_refused_total{topic="tele"}')
over0=$(fleet_metric 'flotilla_mqtt_dropped_total{reason="oversize"}')
dev0=$(q "SELECT COUNT(*) FROM telemetry WHERE device='dev1'")
njunk=0
for f in text json unknown-field other-device declared-too-big bomb short truncated; do
  for t in tele event; do
    pub "flotilla/v1/dev/bad/$t" "$J/$f" >/dev/null
    njunk=$((njunk + 1))
  done
done
pub flotilla/v1/dev/bad/tele "$J/oversized" >/dev/null
pub flotilla/v1/dev/bad/event "$J/good" >/dev/null
# The bad device writing into dev1's topic: the broker says no (0x87).
out=$(pub flotilla/v1/dev/dev1/event "$J/spoof")
check "the ACL refuses bad's publish to dev1's topic" grep -qi "not authori" <<<"$out"
refused_n() {
  [ "$(( $(fleet_metric 'flotilla_telemetry_batches_total{result="refused"}') - ref0 ))" -ge "$njunk" ]
}
check "the $njunk junk batches are refused and counted" fleet_wait 15 refused_n
ref1=$(fleet_metric 'flotilla_telemetry_batches_total{result="refused"}')
mref1=$(fleet_metric 'flotilla_mqtt_refused_total{topic="tele"}')
over1=$(fleet_metric 'flotilla_mqtt_dropped_total{reason="oversize"}')
echo "refused: ingestion $((ref1 - ref0)), mqtt $((mref1 - mref0)), oversize dropped $((over1 - over0))"
check "exactly the junk is refused (not the good batch)" test "$((ref1 - ref0))" = "$njunk"
check "the oversized payload is dropped before ingestion and counted" \
  test "$((over1 - over0))" = 1
good() {
  [ "$(q "SELECT COUNT(*) FROM telemetry WHERE device='bad' AND stream='00000000000000aa'")" = 2 ]
}
check "a valid batch of the same device is still stored" fleet_wait 10 good
check "nothing else of bad is stored" \
  test "$(q "SELECT COUNT(*) FROM telemetry WHERE device='bad'")" = 2
check "nothing spoofed into dev1" \
  test "$(q "SELECT COUNT(*) FROM telemetry WHERE device='dev1' AND stream LIKE '00000000000000%'")" = 0
more() { [ "$(q "SELECT COUNT(*) FROM telemetry WHERE device='dev1'")" -gt "$((dev0 + 3))" ]; }
check "the good agent's records keep arriving" fleet_wait 15 more
check "the controller still runs" kill -0 "$FLEET_CTL_PID"

finish
