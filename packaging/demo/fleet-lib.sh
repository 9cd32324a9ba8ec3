# shellcheck shell=bash
# A local Flotilla fleet on 127.0.0.1, for the demo and the integration
# tests (source it from bash). Everything it starts is stopped by
# fleet_cleanup, which fleet_init installs on EXIT, INT and TERM.
#
#   FLEET_FLOTILLA=.../flotilla FLEET_CONTROLLER_BIN=.../flotilla-controller \
#   FLEET_AGENT_BIN=.../flotilla-agent . packaging/demo/fleet-lib.sh
#   fleet_init NAME                      # a fresh directory, $FLEET_DIR
#   fleet_pki DEVICE...                  # CA, server, controller, device certs
#   fleet_broker_start                   # mosquitto, TLS + ACL, $FLEET_MQTT_PORT
#   fleet_trust MODEL...                 # root + release keys, root-signed keyring
#   fleet_controller_start               # $FLEET_URL, tokens $FLEET_RT / $FLEET_OT
#   fleet_agent_start ID LABELS ARCH RAM_MB [serve]   # one agent process
#   fleet_wait_online 60 ID...           # the controller sees them online
#   fleet_cleanup                        # stop everything (also on exit)
#
# Every wait is bounded. Logs: $FLEET_DIR/controller.log, $FLEET_DIR/ID/agent.log,
# $FLEET_DIR/pki/broker/mosquitto.log. FLEET_KEEP=1 keeps the directory;
# otherwise it is removed by fleet_cleanup unless FLEET_FAILED is non-empty.
# Layout and decisions: docs/demo.md.

FLEET_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
FLEET_SRC=$(cd "$FLEET_LIB_DIR/../.." && pwd)
FLEET_BROKER_PKG=${FLEET_BROKER_PKG:-$FLEET_SRC/packaging/mosquitto}
FLEET_RT=${FLEET_RT:-reader-token-0123456789}
FLEET_OT=${FLEET_OT:-operator-token-0123456789}
FLEET_DIR=
FLEET_URL=
FLEET_MQTT_PORT=
FLEET_FAILED=
FLEET_CTL_PID=
FLEET_BROKER_UP=
FLEET_EXTRA_PIDS=() # other background processes of the caller, stopped first
declare -A FLEET_AGENT_PID=() FLEET_AGENT_PORT=()

fleet_log() { printf '%s\n' "$*" >&2; }
fleet_die() { fleet_log "fleet: $*"; FLEET_FAILED=1; exit 1; }

# fleet_wait SECONDS COMMAND...: poll every 0.2 s until COMMAND succeeds.
fleet_wait() {
  local n=$(( $1 * 5 )) i; shift
  for ((i = 0; i < n; i++)); do "$@" && return 0; sleep 0.2; done
  "$@"
}

fleet_init() { # NAME
  local t
  for t in mosquitto jq curl timeout; do
    command -v $t >/dev/null || [ -x /usr/sbin/$t ] ||
      fleet_die "$t is not installed (bash packaging/deps.sh)"
  done
  for t in FLEET_FLOTILLA FLEET_CONTROLLER_BIN FLEET_AGENT_BIN; do
    [ -x "${!t:-}" ] || fleet_die "$t is not set to a program ('${!t:-}')"
  done
  local base=${FL_TEST_TMPDIR:-${TMPDIR:-/tmp}}
  mkdir -p "$base"
  # As root the broker drops to user mosquitto, which must reach its files.
  if [ "$(id -u)" = 0 ] && id mosquitto >/dev/null 2>&1 && command -v runuser >/dev/null &&
     ! runuser -u mosquitto -- test -x "$base" 2>/dev/null; then
    base=/tmp
  fi
  FLEET_DIR=$(mktemp -d "$base/$1.XXXXXX") || fleet_die "mktemp in $base"
  chmod 0755 "$FLEET_DIR"
  trap fleet_cleanup EXIT
  trap 'fleet_log "fleet: interrupted"; FLEET_FAILED=${FLEET_FAILED:-interrupted}; exit 130' INT TERM
}

fleet_pki() { # DEVICE...
  local P=$FLEET_DIR/pki d
  pki() { "$FLEET_FLOTILLA" pki "$@" >/dev/null || fleet_die "flotilla pki $* failed"; }
  pki init --dir "$P"
  pki issue-server --dir "$P" --dns localhost --ip 127.0.0.1
  pki issue-controller --dir "$P"
  for d in "$@"; do pki issue-device "$d" --dir "$P"; done
}

# A free port is taken at random and tried; a port someone else holds makes
# mosquitto fail to bind, and the next one is tried (20 at most).
fleet_broker_start() {
  local _ out=$FLEET_DIR/broker-start.out
  for _ in $(seq 20); do
    FLEET_MQTT_PORT=$(( 20000 + (RANDOM * 32768 + RANDOM) % 40000 ))
    if FL_BROKER_WAIT_S=10 "$FLEET_BROKER_PKG/start-broker.sh" "$FLEET_DIR/pki" \
         "$FLEET_MQTT_PORT" >"$out" 2>&1; then
      FLEET_BROKER_UP=1
      return 0
    fi
    grep -qE "already in use|exited during start-up" "$out" || break
  done
  cat "$out" >&2
  fleet_die "could not start the broker"
}

fleet_trust() { # MODEL...: keys in $FLEET_DIR/keys, what a device gets in $FLEET_DIR/trust
  local d=$FLEET_DIR models
  mkdir -p "$d/keys" "$d/trust"
  models=$(IFS=,; echo "$*")
  "$FLEET_FLOTILLA" key generate "$d/keys/root.pem" >/dev/null &&
  "$FLEET_FLOTILLA" key generate "$d/keys/release.pem" >/dev/null &&
  "$FLEET_FLOTILLA" keyring create --version 1 --expires-days 30 --threshold 1 \
    --key "$d/keys/release.pub.pem:$models" -o "$d/keys/keyring.json" >/dev/null &&
  "$FLEET_FLOTILLA" keyring sign "$d/keys/keyring.json" --key "$d/keys/root.pem" \
    -o "$d/trust/keyring.dsse.json" >/dev/null &&
  cp "$d/keys/root.pub.pem" "$d/trust/root.pem" || fleet_die "keys and keyring"
}

fleet_metric() { # NAME: one value from /metrics
  curl -s -m 5 -H "Authorization: Bearer $FLEET_RT" "$FLEET_URL/metrics" |
    awk -v k="$1" '$1 == k {print $2}'
}

# The controller: HTTP (API, /metrics, dashboard) on a port it picks itself
# (port 0 + --port-file), MQTT to the broker with its certificate.
fleet_controller_start() {
  local d=$FLEET_DIR
  cat >"$d/controller.conf" <<CONF
[controller]
data_dir = $d/controller-data
listen = 127.0.0.1
port = ${FLEET_CTL_PORT:-0}
trust_dir = $d/trust
read_tokens = dashboard:$FLEET_RT
operator_tokens = operator:$FLEET_OT
ingest_flush_ms = 50

[mqtt]
uri = ssl://127.0.0.1:$FLEET_MQTT_PORT
ca = $d/pki/ca.crt
cert = $d/pki/controller.crt
key = $d/pki/controller.key
CONF
  rm -f "$d/controller.port"
  "$FLEET_CONTROLLER_BIN" --config "$d/controller.conf" --port-file "$d/controller.port" \
    >>"$d/controller.log" 2>&1 &
  FLEET_CTL_PID=$!
  fleet_wait 20 test -s "$d/controller.port" ||
    { tail -n 20 "$d/controller.log" >&2; fleet_die "the controller did not start"; }
  FLEET_CTL_PORT=$(cat "$d/controller.port")
  FLEET_URL=http://127.0.0.1:$FLEET_CTL_PORT
  export FLOTILLA_CONTROLLER=$FLEET_URL
  fleet_wait 20 fleet_mqtt_connected ||
    { tail -n 20 "$d/controller.log" >&2; fleet_die "the controller did not reach the broker"; }
}
fleet_mqtt_connected() { [ "$(fleet_metric flotilla_mqtt_connected)" = 1 ]; }

# SIGTERM, then SIGKILL after 10 s. Returns the exit status (137: killed).
fleet_controller_stop() {
  [ -n "$FLEET_CTL_PID" ] || return 0
  local st=0
  kill -TERM "$FLEET_CTL_PID" 2>/dev/null
  timeout 10 tail --pid="$FLEET_CTL_PID" -f /dev/null || kill -KILL "$FLEET_CTL_PID" 2>/dev/null
  wait "$FLEET_CTL_PID" 2>/dev/null || st=$?
  FLEET_CTL_PID=
  return $st
}

# fleet_agent_start ID LABELS ARCH RAM_MB [serve]: an agent with its own
# state directory, trust store and config; [hw] gives it the hardware class
# ARCH/RAM_MB (and accelerators $FLEET_AGENT_ACCEL, if set) whatever this
# machine is. With "serve" it also listens on a
# free 127.0.0.1 port for the local API ($FLEET_AGENT_PORT[ID]).
fleet_agent_start() {
  local id=$1 labels=$2 arch=$3 ram=$4 serve=${5:-} d=$FLEET_DIR/$1 _try port=
  mkdir -p "$d/trust"
  cp "$FLEET_DIR/trust/"* "$d/trust/"
  for _try in 1 2 3 4 5; do
    {
      cat <<CONF
[agent]
id = $id
state_dir = $d/state
trust_dir = $d/trust
labels = $labels

[mqtt]
uri = ssl://127.0.0.1:$FLEET_MQTT_PORT
ca = $FLEET_DIR/pki/ca.crt
cert = $FLEET_DIR/pki/devices/$id.crt
key = $FLEET_DIR/pki/devices/$id.key

[hw]
arch = $arch
ram_mb = $ram
${FLEET_AGENT_ACCEL:+accelerators = $FLEET_AGENT_ACCEL}

[serve]
CONF
      if [ "$serve" = serve ]; then
        port=$(( 20000 + (RANDOM * 32768 + RANDOM) % 40000 ))
        echo "listen = 127.0.0.1:$port"
      fi
    } >"$d/agent.conf"
    "$FLEET_AGENT_BIN" -c "$d/agent.conf" run >>"$d/agent.log" 2>&1 &
    FLEET_AGENT_PID[$id]=$!
    [ -n "$port" ] || return 0
    FLEET_AGENT_PORT[$id]=$port
    # The port may be taken: the agent then exits; try another.
    if fleet_wait 15 fleet_agent_api_up "$id"; then return 0; fi
    kill -0 "${FLEET_AGENT_PID[$id]}" 2>/dev/null &&
      { tail -n 20 "$d/agent.log" >&2; fleet_die "$id: local API did not answer"; }
    wait "${FLEET_AGENT_PID[$id]}" 2>/dev/null
  done
  fleet_die "$id: no free port for the local API"
}
fleet_agent_api_up() {
  curl -s -m 2 -o /dev/null "http://127.0.0.1:${FLEET_AGENT_PORT[$1]}/healthz"
}

fleet_agent_stop() { # ID [SIGNAL]
  local p=${FLEET_AGENT_PID[$1]:-}
  [ -n "$p" ] || return 0
  kill "-${2:-TERM}" "$p" 2>/dev/null
  timeout 10 tail --pid="$p" -f /dev/null || kill -KILL "$p" 2>/dev/null
  wait "$p" 2>/dev/null
  unset "FLEET_AGENT_PID[$1]"
}

# The controller's view of a device (JSON), or nothing.
fleet_device() {
  "$FLEET_FLOTILLA" devices show "$1" --token "$FLEET_RT" --json 2>/dev/null
}
fleet_online() { [ "$(fleet_device "$1" | jq -r .device.online 2>/dev/null)" = true ]; }
fleet_all_online() { local d; for d in "$@"; do fleet_online "$d" || return 1; done; }
fleet_wait_online() { # SECONDS ID...
  local s=$1; shift
  fleet_wait "$s" fleet_all_online "$@"
}

# The version of MODEL a device runs, as the controller sees it.
fleet_version() { # ID MODEL
  fleet_device "$1" | jq -r --arg m "$2" '.models[]? | select(.model == $m) | .version' 2>/dev/null
}
# ... and as the agent's own status says (its current slot).
fleet_agent_version() { # ID MODEL
  "$FLEET_AGENT_BIN" -c "$FLEET_DIR/$1/agent.conf" status --json 2>/dev/null |
    jq -r --arg m "$2" '.models[$m] as $x | $x.slots[$x.current].version // empty' 2>/dev/null
}

fleet_rollout() { # ID: the rollout document
  curl -s -m 5 -H "Authorization: Bearer $FLEET_RT" "$FLEET_URL/api/v1/rollouts/$1"
}
# POST a rollout body (JSON); prints the new id, or the error and fails.
fleet_rollout_create() { # BODY
  local out code
  out=$(curl -s -m 10 -w '\n%{http_code}' -H "Authorization: Bearer $FLEET_OT" \
        -H 'Content-Type: application/json' --data-binary "$1" "$FLEET_URL/api/v1/rollouts")
  code=${out##*$'\n'}; out=${out%$'\n'*}
  [ "$code" = 201 ] || { fleet_log "rollout create: HTTP $code: $out"; return 1; }
  jq -r .id <<<"$out"
}
fleet_rollout_state() { fleet_rollout "$1" | jq -r .state 2>/dev/null; }

fleet_cleanup() {
  local rc=$? id
  trap - EXIT INT TERM
  for id in "${FLEET_EXTRA_PIDS[@]}"; do kill "$id" 2>/dev/null; done
  for id in "${!FLEET_AGENT_PID[@]}"; do kill -TERM "${FLEET_AGENT_PID[$id]}" 2>/dev/null; done
  for id in "${!FLEET_AGENT_PID[@]}"; do
    timeout 10 tail --pid="${FLEET_AGENT_PID[$id]}" -f /dev/null ||
      kill -KILL "${FLEET_AGENT_PID[$id]}" 2>/dev/null
  done
  FLEET_AGENT_PID=()
  fleet_controller_stop || true
  if [ -n "$FLEET_BROKER_UP" ]; then
    "$FLEET_BROKER_PKG/stop-broker.sh" "$FLEET_DIR/pki" >/dev/null 2>&1 ||
      fleet_log "fleet: stop-broker failed"
    FLEET_BROKER_UP=
  fi
  wait 2>/dev/null
  if [ -n "$FLEET_DIR" ] && [ -d "$FLEET_DIR" ]; then
    if [ -z "${FLEET_KEEP:-}" ] && [ -z "$FLEET_FAILED" ] && [ "$rc" = 0 ]; then
      rm -rf "$FLEET_DIR"
    else
      fleet_log "fleet: files kept in $FLEET_DIR"
    fi
  fi
  exit "$rc"
}
