# Helpers of the telemetry integration tests: `. telemetry_lib.sh FLOTILLA
# CONTROLLER AGENT` after lib.sh, then `tele_setup NAME DEVICE...` starts
# (packaging/demo/fleet-lib.sh) a broker with TLS + ACL, a controller and
# certificates for DEVICEs; $DB is the controller's SQLite store.

# fleet-lib.sh declares associative arrays: source it at the top level.
FLEET_FLOTILLA=$1 FLEET_CONTROLLER_BIN=$2 FLEET_AGENT_BIN=$3
tele_fleet_lib=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../packaging/demo" && pwd)/fleet-lib.sh
[ -r "$tele_fleet_lib" ] || { echo "FAIL: $tele_fleet_lib missing"; exit 1; }
# shellcheck source=/dev/null
. "$tele_fleet_lib"
command -v sqlite3 >/dev/null || { echo "FAIL: sqlite3 is not installed"; exit 1; }

tele_setup() { # NAME DEVICE...
  fleet_init "$1"
  shift
  fleet_pki "$@"
  fleet_broker_start
  fleet_trust m
  fleet_controller_start
  DB=$FLEET_DIR/controller-data/controller.db
}

# tele_agent_start ID [CONFIG LINES for [telemetry]] [for [serve]]: an
# agent that reports every second (no local API unless told).
tele_agent_start() {
  local id=$1 extra=${2:-} serve=${3:-socket = off} d=$FLEET_DIR/$1
  mkdir -p "$d/trust" "$d/state/spool"
  cp "$FLEET_DIR/trust/"* "$d/trust/"
  cat >"$d/agent.conf" <<CONF
[agent]
id = $id
state_dir = $d/state
trust_dir = $d/trust

[mqtt]
uri = ssl://127.0.0.1:$FLEET_MQTT_PORT
ca = $FLEET_DIR/pki/ca.crt
cert = $FLEET_DIR/pki/devices/$id.crt
key = $FLEET_DIR/pki/devices/$id.key

[serve]
$serve

[telemetry]
interval = 1
$extra
CONF
  "$FLEET_AGENT_BIN" -c "$d/agent.conf" run >>"$d/agent.log" 2>&1 &
  FLEET_AGENT_PID[$id]=$!
}

# The controller store (read while the controller runs: WAL).
q() { sqlite3 -cmd '.timeout 5000' "$DB" "$1" 2>/dev/null; }
# The agent's outbox.
qa() { sqlite3 -cmd '.timeout 5000' "$FLEET_DIR/$1/state/state.db" "$2" 2>/dev/null; }
outbox_empty() { [ "$(qa "$1" 'SELECT COUNT(*) FROM tele_outbox')" = 0 ]; }

# Broker stop/start on the same port (the PKI directory keeps its files).
broker_stop() {
  "$FLEET_BROKER_PKG/stop-broker.sh" "$FLEET_DIR/pki" >/dev/null 2>&1
  FLEET_BROKER_UP=
}
broker_start() {
  FL_BROKER_WAIT_S=10 "$FLEET_BROKER_PKG/start-broker.sh" "$FLEET_DIR/pki" \
    "$FLEET_MQTT_PORT" >"$FLEET_DIR/broker-restart.out" 2>&1 && FLEET_BROKER_UP=1
}

controller_kill9() {
  kill -KILL "$FLEET_CTL_PID" 2>/dev/null
  wait "$FLEET_CTL_PID" 2>/dev/null
  FLEET_CTL_PID=
}
